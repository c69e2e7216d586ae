--[[
  The waiting room of one sale: who is in line, in what order, and how far
  admission has got. No process runs it: every join and every poll first
  advances admission to "now" (Redis' clock), then answers. So the room
  moves with time and stock whichever function instance asks, and every
  function can still scale to zero.

  Keys, under the sale's hash tag (one Redis Cluster slot):
    KEYS[1] fs:{sale}:wr          hash  served, seq, credit, last_ms
    KEYS[2] fs:{sale}:wr:queue    zset  ticket scored by its place in line
    KEYS[3] fs:{sale}:wr:users    hash  user -> ticket (one ticket per user)
    KEYS[4] fs:{sale}:wr:tickets  hash  ticket -> "user|state|admission_expires_ms"
                                        state: w waiting, a admitted, u used
    KEYS[5] fs:{sale}:wr:open     zset  admitted tickets not yet used, by expiry

  Order: a buyer who joins before the start gets a random place among the
  others who did (the caller draws it; the place is not shown until the
  start), so the pre-queue is shuffled; after the start, first come, first
  served (places after every pre-queue place).

  Admission: a token bucket fills at `rate` per second and holds at most a
  fifth of a second's worth (at least one admission), so a lull, or the
  moment the sale starts with a crowd already waiting, never turns into a
  burst at the order function: in any second at most 1.2 x rate are let in.
  It admits the next in line while the stock can still serve them: never
  more open admissions than units remaining. An admission that lapses unused
  leaves the open set, and so frees its place for the next in line.

  Common ARGV after the operation: starts_ms ends_ms rate ttl_ms remaining
  sold_out(0/1); then the operation's own.
]]

local ROOM, QUEUE, USERS, TICKETS, OPEN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op = ARGV[1]
local starts, ends = tonumber(ARGV[2]), tonumber(ARGV[3])
local rate, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local remaining, sold_out = tonumber(ARGV[6]), ARGV[7] == '1'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Pre-queue places are in [0, 2^50); later ones from 2^51 on.
-- The bucket's depth, in seconds of the rate.
local BURST_S = 0.2
local AFTER_START = 2 ^ 51

local function advance()
  if now < starts then return end
  redis.call('ZREMRANGEBYSCORE', OPEN, '-inf', now)
  local f = redis.call('HMGET', ROOM, 'served', 'credit', 'last_ms')
  local served = tonumber(f[1] or '0')
  local credit = tonumber(f[2] or '1')
  local last = math.max(tonumber(f[3] or starts), starts)
  credit = math.min(credit + rate * (now - last) / 1000, math.max(rate * BURST_S, 1))
  local waiting = redis.call('ZCARD', QUEUE) - served
  local capacity = remaining - redis.call('ZCARD', OPEN)
  if sold_out then capacity = 0 end
  local k = math.min(math.floor(credit), waiting, capacity)
  if k > 0 then
    local next_up = redis.call('ZRANGE', QUEUE, served, served + k - 1)
    local expires = now + ttl
    for _, ticket in ipairs(next_up) do
      local rec = redis.call('HGET', TICKETS, ticket)
      local user = string.match(rec, '^(.*)|%a|%-?%d+$')
      redis.call('HSET', TICKETS, ticket, user .. '|a|' .. expires)
      redis.call('ZADD', OPEN, expires, ticket)
    end
    served = served + #next_up
    credit = credit - #next_up
  end
  redis.call('HSET', ROOM, 'served', served, 'credit', tostring(credit), 'last_ms', now)
end

-- {status, ticket, position|'', admission_expires_ms|'', now, served}
local function status(ticket)
  local rec = redis.call('HGET', TICKETS, ticket)
  local user, state, expires = string.match(rec, '^(.*)|(%a)|(%-?%d+)$')
  expires = tonumber(expires)
  if state == 'a' or state == 'u' then
    if now < expires then return {'admitted', ticket, '', tostring(expires), tostring(now)} end
    return {'expired', ticket, '', tostring(expires), tostring(now)}
  end
  if sold_out or now >= ends then return {'sold_out', ticket, '', '', tostring(now)} end
  local served = tonumber(redis.call('HGET', ROOM, 'served') or '0')
  local rank = redis.call('ZRANK', QUEUE, ticket)
  local position = rank - served + 1
  if now < starts then
    -- The line is shuffled at the start: before it, everyone's place is
    -- only "one of the pre-queue".
    position = redis.call('ZCOUNT', QUEUE, '-inf', '(' .. AFTER_START)
  end
  return {'waiting', ticket, tostring(math.max(position, 1)), '', tostring(now)}
end

if op == 'join' then
  -- ARGV[8..]: user new_ticket random_place
  local user, fresh, place = ARGV[8], ARGV[9], tonumber(ARGV[10])
  advance()
  local existing = redis.call('HGET', USERS, user)
  if existing then
    local s = status(existing)
    s[#s + 1] = 'existing'
    return s
  end
  if now >= ends then return {'ended'} end
  if sold_out then return {'sold_out'} end
  local score = place
  if now >= starts then score = AFTER_START + redis.call('HINCRBY', ROOM, 'seq', 1) end
  redis.call('ZADD', QUEUE, score, fresh)
  redis.call('HSET', USERS, user, fresh)
  redis.call('HSET', TICKETS, fresh, user .. '|w|0')
  -- Someone joining an idle room may be admitted at once.
  advance()
  local s = status(fresh)
  s[#s + 1] = 'new'
  return s

elseif op == 'poll' then
  -- ARGV[8..]: ticket user
  local ticket, user = ARGV[8], ARGV[9]
  local rec = redis.call('HGET', TICKETS, ticket)
  if not rec or string.match(rec, '^(.*)|%a|%-?%d+$') ~= user then return {'not_found'} end
  advance()
  return status(ticket)

elseif op == 'used' then
  -- ARGV[8..]: ticket. The admission bought what it was for: its place in
  -- the open set goes to the next in line.
  local ticket = ARGV[8]
  local rec = redis.call('HGET', TICKETS, ticket)
  if not rec then return 0 end
  local user, state, expires = string.match(rec, '^(.*)|(%a)|(%-?%d+)$')
  if state ~= 'a' then return 0 end
  redis.call('HSET', TICKETS, ticket, user .. '|u|' .. expires)
  redis.call('ZREM', OPEN, ticket)
  return 1

elseif op == 'stats' then
  advance()
  local f = redis.call('HMGET', ROOM, 'served')
  return {tostring(redis.call('ZCARD', QUEUE)), f[1] or '0', tostring(redis.call('ZCARD', OPEN))}
end

return redis.error_reply('unknown waiting room operation ' .. tostring(op))
