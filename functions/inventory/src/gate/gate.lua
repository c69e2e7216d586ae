--[[
  The stock gate. THIS is where overselling is prevented at stampede speed.

  Redis runs a script atomically: no other command interleaves with it, so
  "check the window, the user's limit and the stock, then take a hold" is one
  indivisible step however many thousand buyers arrive in the same
  millisecond. (The DynamoDB ledger checks the same limits again when it
  writes the order; see ledger/dynamo/items.rs. Two independent locks, one truth.)

  Keys, all hash-tagged by sale so they live in one Redis Cluster slot:
    KEYS[1] fs:{sale}:sale    hash  total limit starts ends remaining held confirmed
    KEYS[2] fs:{sale}:users   hash  user_id -> units held + confirmed
    KEYS[3] fs:{sale}:holds   hash  hold_id -> "h|qty|expires_ms|user" (held)
                                            or "s|qty|0|user"          (settled)
    KEYS[4] fs:{sale}:expiry  zset  hold_id scored by expires_ms (held only)

  Time is Redis' own (TIME), never the caller's: every instance of every
  function sees one clock for the sale window and for when holds lapse, so
  a skewed pod cannot open a sale early or keep a hold alive.

  Invariant kept by every operation, checked by the tests:
    remaining + held + confirmed = total
  (remaining can dip below zero only transiently after a rebuild; the ledger
  then refuses the extra unit and releasing its hold restores it.)

  ARGV[1] names the operation; the rest are its arguments.
]]

local SALE, USERS, HOLDS, EXPIRY = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- Milliseconds since the epoch by Redis' clock. (Scripts replicate their
-- effects, not themselves, so a non-deterministic TIME is allowed.)
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function parse(rec)
  local state, qty, expires, user = string.match(rec, '^(%a)|(%d+)|(%-?%d+)|(.*)$')
  return state, tonumber(qty), expires, user
end

-- Counts a confirmed order that the gate does not know as held: after a
-- rebuild, or when its hold was lost with a Redis restart.
local function adopt(id, user, qty)
  redis.call('HINCRBY', SALE, 'remaining', -qty)
  redis.call('HINCRBY', SALE, 'confirmed', qty)
  redis.call('HINCRBY', USERS, user, qty)
  redis.call('HSET', HOLDS, id, 's|' .. qty .. '|0|' .. user)
end

-- Marks confirmed orders as settled. Idempotent: settling twice is a no-op.
local function settle(first)
  local n = tonumber(ARGV[first])
  local adopted = 0
  for i = 0, n - 1 do
    local id = ARGV[first + 1 + i * 3]
    local user = ARGV[first + 2 + i * 3]
    local qty = tonumber(ARGV[first + 3 + i * 3])
    local rec = redis.call('HGET', HOLDS, id)
    if rec then
      local state, hqty, _, huser = parse(rec)
      if state == 'h' then
        redis.call('HINCRBY', SALE, 'held', -hqty)
        redis.call('HINCRBY', SALE, 'confirmed', hqty)
        redis.call('HSET', HOLDS, id, 's|' .. hqty .. '|0|' .. huser)
        redis.call('ZREM', EXPIRY, id)
      end
    else
      adopt(id, user, qty)
      adopted = adopted + 1
    end
  end
  return adopted
end

local op = ARGV[1]

if op == 'hold' then
  -- ARGV: hold_id user_id qty ttl_ms
  local id, user, qty = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local existing = redis.call('HGET', HOLDS, id)
  if existing then return {'exists', existing} end
  local f = redis.call('HMGET', SALE, 'remaining', 'held', 'limit', 'starts', 'ends')
  if not f[1] then return {'missing'} end
  local now = now_ms()
  if now < tonumber(f[4]) then return {'upcoming'} end
  if now >= tonumber(f[5]) then return {'ended'} end
  if tonumber(f[1]) < qty then return {'sold_out', f[2], f[1]} end
  local taken = tonumber(redis.call('HGET', USERS, user) or '0')
  if taken + qty > tonumber(f[3]) then return {'limit'} end
  local expires = now + tonumber(ARGV[5])
  redis.call('HINCRBY', SALE, 'remaining', -qty)
  redis.call('HINCRBY', SALE, 'held', qty)
  redis.call('HINCRBY', USERS, user, qty)
  redis.call('HSET', HOLDS, id, 'h|' .. qty .. '|' .. expires .. '|' .. user)
  redis.call('ZADD', EXPIRY, expires, id)
  return {'held', tostring(expires)}

elseif op == 'settle' then
  -- ARGV: n, then n triples of hold_id user_id qty
  if redis.call('EXISTS', SALE) == 0 then return -1 end
  return settle(2)

elseif op == 'release' then
  -- ARGV: hold_id expires_ms. Only the very hold taken at expires_ms is
  -- released, so a late release can never free a newer hold of the same id.
  local rec = redis.call('HGET', HOLDS, ARGV[2])
  if not rec then return 0 end
  local state, qty, expires, user = parse(rec)
  if state ~= 'h' or expires ~= ARGV[3] then return 0 end
  redis.call('HINCRBY', SALE, 'remaining', qty)
  redis.call('HINCRBY', SALE, 'held', -qty)
  if redis.call('HINCRBY', USERS, user, -qty) <= 0 then redis.call('HDEL', USERS, user) end
  redis.call('HDEL', HOLDS, ARGV[2])
  redis.call('ZREM', EXPIRY, ARGV[2])
  return 1

elseif op == 'load' then
  -- ARGV: total limit starts ends n, then n triples of confirmed orders.
  -- Only loads a sale the gate does not have: a live gate is never clobbered.
  if redis.call('EXISTS', SALE) == 1 then return 0 end
  redis.call('DEL', USERS, HOLDS, EXPIRY)
  redis.call('HSET', SALE, 'total', ARGV[2], 'limit', ARGV[3], 'starts', ARGV[4], 'ends', ARGV[5],
    'remaining', ARGV[2], 'held', 0, 'confirmed', 0)
  settle(6)
  return 1

elseif op == 'lookup' then
  -- ARGV: hold_id
  return redis.call('HGET', HOLDS, ARGV[2])

elseif op == 'claim' then
  -- ARGV: max lease_ms. Lapsed holds, oldest first, each *claimed* for
  -- lease_ms: its expiry score moves to now + lease, so the sweeps of other
  -- instances (or this one's next) skip it while one resolves it. If that
  -- resolver dies, the lease lapses and the hold is claimed again. The
  -- record keeps its own expiry: that is the attempt's identity.
  local now = now_ms()
  local ids = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
  local out = {}
  for _, id in ipairs(ids) do
    local rec = redis.call('HGET', HOLDS, id)
    if rec and string.sub(rec, 1, 1) == 'h' then
      redis.call('ZADD', EXPIRY, now + tonumber(ARGV[3]), id)
      table.insert(out, id)
      table.insert(out, rec)
    else
      redis.call('ZREM', EXPIRY, id)
    end
  end
  return out

elseif op == 'snapshot' then
  local f = redis.call('HMGET', SALE, 'total', 'remaining', 'held', 'confirmed')
  if not f[1] then return {} end
  local oldest = redis.call('ZRANGE', EXPIRY, 0, 0, 'WITHSCORES')
  return {f[1], f[2], f[3], f[4], tostring(redis.call('ZCARD', EXPIRY)), oldest[2] or ''}
end

return redis.error_reply('unknown gate operation ' .. tostring(op))
