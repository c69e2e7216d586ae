--[[
  The stock gate. THIS is where overselling is prevented at stampede speed.

  Redis runs a script atomically: no other command interleaves with it, so
  "check the window, the user's limit and the stock, then take a hold" is one
  indivisible step however many thousand buyers arrive in the same
  millisecond. (The DynamoDB ledger checks the same limits again when it
  writes the order; see ledger/dynamo/items.rs. Two independent locks, one truth.)

  Keys of one *bucket* of a sale, all under one hash tag so they live in one
  Redis Cluster slot (a sale of one bucket: tag {sale}; more buckets, each
  on a shard of its own: see gate/buckets.rs):
    KEYS[1] fs:{tag}:sale    hash  total limit starts ends remaining held confirmed [buckets]
                                   [loader lease: while loading, see 'begin']
    KEYS[2] fs:{tag}:users   hash  user_id -> units held + confirmed (users at home here)
    KEYS[3] fs:{tag}:holds   hash  hold_id -> "<state><part>|qty|expires_ms|user"
    KEYS[4] fs:{tag}:expiry  zset  hold_id scored by expires_ms (held only)

  A record's state is h (held) or s (settled); its part says what of the
  hold this bucket carries: nothing for all of it (stock here, user counted
  here), u for the user's count only (the user's home bucket was empty, so
  the stock came from other buckets), p<n> for the user's count and n units
  (the home bucket had some), k for stock only (taken here for a user at
  home elsewhere). Each part is ended (settled, released, swept) in its own
  bucket; the ledger decides for all of them.

  Time is Redis' own (TIME), never the caller's: every instance of every
  function sees one clock for the sale window and for when holds lapse, so
  a skewed pod cannot open a sale early or keep a hold alive.

  Invariant kept by every operation in every bucket, checked by the tests:
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

-- A record: "<state><part>|qty|expires_ms|user", state h (held) or s
-- (settled); part '' (the whole hold: its stock and the user's count), u
-- (the user's count only), k (stock only), or p<n> (the user's count and n
-- of the units; the rest of the stock is in other buckets). Returns the
-- fields and the units of stock this record carries.
local function parse(rec)
  local state, part, n, qty, expires, user =
    string.match(rec, '^([hs])([ukp]?)(%d*)|(%d+)|(%-?%d+)|(.*)$')
  qty = tonumber(qty)
  local stock = qty
  if part == 'u' then stock = 0 elseif part == 'p' then stock = tonumber(n) end
  return state, qty, expires, user, part, stock
end

local function record(state, part, stock, qty, expires, user)
  if part == 'p' then part = 'p' .. stock end
  return state .. part .. '|' .. qty .. '|' .. expires .. '|' .. user
end

-- Whether a part carries the user's count (all but a stock part).
local function has_user(part) return part ~= 'k' end

-- Counts a confirmed order (or one part of it: '', 'u' or 'k') that the
-- gate does not know as held: after a rebuild, or when its hold was lost
-- with a Redis restart.
local function adopt(id, user, qty, part)
  part = part or ''
  local stock = qty
  if part == 'u' then stock = 0 end
  if stock > 0 then
    redis.call('HINCRBY', SALE, 'remaining', -stock)
    redis.call('HINCRBY', SALE, 'confirmed', stock)
  end
  if has_user(part) then redis.call('HINCRBY', USERS, user, qty) end
  redis.call('HSET', HOLDS, id, record('s', part, stock, qty, 0, user))
end

-- Settles the part of a hold this bucket has. Returns what that was (b for
-- the whole hold, u, k or p) followed by the units of stock it carried, or
-- false if the bucket has no record of the hold.
local function settle_one(id)
  local rec = redis.call('HGET', HOLDS, id)
  if not rec then return false end
  local state, qty, _, user, part, stock = parse(rec)
  if state == 'h' then
    if stock > 0 then
      redis.call('HINCRBY', SALE, 'held', -stock)
      redis.call('HINCRBY', SALE, 'confirmed', stock)
    end
    redis.call('HSET', HOLDS, id, record('s', part, stock, qty, 0, user))
    redis.call('ZREM', EXPIRY, id)
  end
  if part == '' then part = 'b' end
  return part .. stock
end

-- Marks confirmed orders as settled. Idempotent: settling twice is a no-op.
local function settle(first)
  local n = tonumber(ARGV[first])
  local adopted = 0
  for i = 0, n - 1 do
    local id = ARGV[first + 1 + i * 3]
    local user = ARGV[first + 2 + i * 3]
    local qty = tonumber(ARGV[first + 3 + i * 3])
    if not settle_one(id) then
      adopt(id, user, qty)
      adopted = adopted + 1
    end
  end
  return adopted
end

-- Whether the bucket has `qty` units left.
local function has_room(qty)
  return tonumber(redis.call('HGET', SALE, 'remaining')) >= qty
end

-- Adopts n triples from ARGV[first] on as `part`; stock parts only where
-- the stock allows (unless forced). Returns one code per order: '1'
-- (adopted), '0' (no room) or '-' (a record exists already: whoever made
-- it places the rest of the order).
local function adopt_parts(first, part, force)
  local n = tonumber(ARGV[first])
  local out = {}
  for i = 0, n - 1 do
    local id = ARGV[first + 1 + i * 3]
    local user = ARGV[first + 2 + i * 3]
    local qty = tonumber(ARGV[first + 3 + i * 3])
    local code = '-'
    if redis.call('HEXISTS', HOLDS, id) == 0 then
      code = '0'
      if part == 'u' or force or has_room(qty) then
        adopt(id, user, qty, part)
        code = '1'
      end
    end
    out[#out + 1] = code
  end
  return table.concat(out)
end

-- Whether `token` is the loader of this bucket (which is loading).
local function is_loader(token)
  return redis.call('HGET', SALE, 'loader') == token
end

local op = ARGV[1]

if op == 'hold' then
  -- ARGV: hold_id user_id qty ttl_ms [spill]. Run in the user's home
  -- bucket. With spill = 1 (a sale of several buckets) and no stock here,
  -- the user's count is still taken (their limit is atomic here, and only
  -- here) as a user part, and the caller takes the stock from another
  -- bucket ('take'), or gives the user part back if none has any.
  local id, user, qty = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local existing = redis.call('HGET', HOLDS, id)
  if existing then return {'exists', existing} end
  local f = redis.call('HMGET', SALE, 'remaining', 'held', 'limit', 'starts', 'ends', 'loader')
  if not f[1] then return {'missing'} end
  local now = now_ms()
  if now < tonumber(f[4]) then return {'upcoming'} end
  if now >= tonumber(f[5]) then return {'ended'} end
  if f[6] then return {'loading'} end
  local expires = now + tonumber(ARGV[5])
  if tonumber(f[1]) < qty then
    if ARGV[6] ~= '1' then return {'sold_out', f[2], f[1]} end
    local taken = tonumber(redis.call('HGET', USERS, user) or '0')
    if taken + qty > tonumber(f[3]) then return {'limit'} end
    -- Whatever stock is here is taken too; the rest comes from elsewhere.
    local here = math.max(0, tonumber(f[1]))
    redis.call('HINCRBY', USERS, user, qty)
    local part = 'u'
    if here > 0 then
      part = 'p'
      redis.call('HINCRBY', SALE, 'remaining', -here)
      redis.call('HINCRBY', SALE, 'held', here)
    end
    redis.call('HSET', HOLDS, id, record('h', part, here, qty, expires, user))
    redis.call('ZADD', EXPIRY, expires, id)
    return {'spill', tostring(expires), f[2], f[1], tostring(here)}
  end
  local taken = tonumber(redis.call('HGET', USERS, user) or '0')
  if taken + qty > tonumber(f[3]) then return {'limit'} end
  redis.call('HINCRBY', SALE, 'remaining', -qty)
  redis.call('HINCRBY', SALE, 'held', qty)
  redis.call('HINCRBY', USERS, user, qty)
  redis.call('HSET', HOLDS, id, 'h|' .. qty .. '|' .. expires .. '|' .. user)
  redis.call('ZADD', EXPIRY, expires, id)
  return {'held', tostring(expires)}

elseif op == 'take' then
  -- ARGV: hold_id user_id want expires_ms. A stock part of a hold whose
  -- user part is in the user's home bucket; same id, same expiry. Takes
  -- what this bucket has, up to `want` (a hold of several units may take
  -- its stock from several buckets: no unit is refused while any bucket
  -- has it).
  local id, user, want = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local existing = redis.call('HGET', HOLDS, id)
  if existing then return {'exists', existing} end
  local f = redis.call('HMGET', SALE, 'remaining', 'held', 'starts', 'ends', 'loader')
  if not f[1] then return {'missing'} end
  local now = now_ms()
  if now < tonumber(f[3]) then return {'upcoming'} end
  if now >= tonumber(f[4]) then return {'ended'} end
  if f[5] then return {'loading'} end
  local qty = math.min(want, tonumber(f[1]))
  if qty <= 0 then return {'sold_out', f[2], f[1]} end
  redis.call('HINCRBY', SALE, 'remaining', -qty)
  redis.call('HINCRBY', SALE, 'held', qty)
  redis.call('HSET', HOLDS, id, record('h', 'k', qty, qty, ARGV[5], user))
  redis.call('ZADD', EXPIRY, tonumber(ARGV[5]), id)
  return {'held', tostring(qty)}

elseif op == 'settle_parts' then
  -- ARGV: n, then n triples. Settles what this bucket has of each order
  -- and says what that was, per order (see settle_one; - for nothing);
  -- the caller adopts what no bucket had.
  if redis.call('EXISTS', SALE) == 0 then return -1 end
  local n = tonumber(ARGV[2])
  local out = {}
  for i = 0, n - 1 do
    out[#out + 1] = settle_one(ARGV[3 + i * 3]) or '-'
  end
  return out

elseif op == 'adopt' then
  -- ARGV: part ('' as 'b', 'u' or 'k') force n triples; see adopt_parts.
  if redis.call('EXISTS', SALE) == 0 then return -1 end
  local part = ARGV[2]
  if part == 'b' then part = '' end
  return adopt_parts(4, part, ARGV[3] == '1')

elseif op == 'settle' then
  -- ARGV: n, then n triples of hold_id user_id qty
  if redis.call('EXISTS', SALE) == 0 then return -1 end
  return settle(2)

elseif op == 'release' then
  -- ARGV: hold_id expires_ms. Only the very hold taken at expires_ms is
  -- released, so a late release can never free a newer hold of the same id.
  -- Returns 0 (nothing released), 1 (all of a hold), 2 (its user part)
  -- or 3 (its stock part).
  local rec = redis.call('HGET', HOLDS, ARGV[2])
  if not rec then return 0 end
  local state, qty, expires, user, part, stock = parse(rec)
  if state ~= 'h' or expires ~= ARGV[3] then return 0 end
  if stock > 0 then
    redis.call('HINCRBY', SALE, 'remaining', stock)
    redis.call('HINCRBY', SALE, 'held', -stock)
  end
  if has_user(part) and redis.call('HINCRBY', USERS, user, -qty) <= 0 then
    redis.call('HDEL', USERS, user)
  end
  redis.call('HDEL', HOLDS, ARGV[2])
  redis.call('ZREM', EXPIRY, ARGV[2])
  if part == 'u' or part == 'p' then return 2 elseif part == 'k' then return 3 end
  return 1

elseif op == 'begin' then
  -- ARGV: token lease_ms total limit starts ends buckets arbiter replace.
  -- Creates this bucket empty and loading, for the loader `token` (see
  -- gate/mod.rs). The arbiter (bucket 0) decides who loads: it answers
  -- 'loaded' for a loaded sale (unless told to replace it: another bucket
  -- was lost) and 'busy' while another loader's lease is live; a lapsed
  -- lease is taken over, the half-loaded sale wiped. The other buckets are
  -- begun by the loader after the arbiter said 'begun'. UNLINK, not DEL:
  -- the holds of a big sale are freed off the main thread.
  local now = now_ms()
  if ARGV[9] == '1' then
    local f = redis.call('HMGET', SALE, 'total', 'loader', 'lease')
    if f[1] then
      if not f[2] then
        if ARGV[10] ~= '1' then return 'loaded' end
      elseif tonumber(f[3] or '0') > now then
        return 'busy'
      end
    end
  end
  redis.call('UNLINK', SALE, USERS, HOLDS, EXPIRY)
  redis.call('HSET', SALE, 'total', ARGV[4], 'limit', ARGV[5], 'starts', ARGV[6], 'ends', ARGV[7],
    'remaining', ARGV[4], 'held', 0, 'confirmed', 0,
    'loader', ARGV[2], 'lease', now + tonumber(ARGV[3]))
  if tonumber(ARGV[8]) > 1 then redis.call('HSET', SALE, 'buckets', ARGV[8]) end
  return 'begun'

elseif op == 'load' then
  -- ARGV: token lease_ms mode n, then n triples of confirmed orders. Counts
  -- those this bucket has no record of, renewing the lease; -1 (nothing
  -- done) unless `token` is the bucket's loader. Modes: whole (a sale of
  -- one bucket: all of each order here, room or not), home (the users'
  -- home bucket: all here if the room allows, else their count only, and
  -- the loader places the stock elsewhere), stock / force (stock parts of
  -- users at home elsewhere: where the room allows / regardless). One code
  -- per order: '1' (counted), 'u' (the user's count only), '0' (no room)
  -- or '-' (a record exists: counted already).
  -- The hot loop of a rebuild, so lean: HSETNX checks and writes the
  -- record in one call, and the sale's counters move once per call.
  local f = redis.call('HMGET', SALE, 'loader', 'remaining')
  if f[1] ~= ARGV[2] then return -1 end
  local remaining = tonumber(f[2])
  local taken = 0
  local mode = ARGV[4]
  local n = tonumber(ARGV[5])
  local out = {}
  for i = 0, n - 1 do
    local id, user, qty = ARGV[6 + i * 3], ARGV[7 + i * 3], tonumber(ARGV[8 + i * 3])
    local room = mode == 'whole' or mode == 'force' or remaining >= qty
    local part, code = '', '1'
    if mode == 'stock' or mode == 'force' then
      part = 'k'
    elseif not room then
      part, code = 'u', 'u'
    end
    if part == 'k' and not room then
      code = redis.call('HEXISTS', HOLDS, id) == 1 and '-' or '0'
    elseif redis.call('HSETNX', HOLDS, id, record('s', part, qty, qty, 0, user)) == 0 then
      code = '-'
    else
      if part ~= 'u' then
        remaining = remaining - qty
        taken = taken + qty
      end
      if part ~= 'k' then redis.call('HINCRBY', USERS, user, qty) end
    end
    out[#out + 1] = code
  end
  if taken > 0 then
    redis.call('HINCRBY', SALE, 'remaining', -taken)
    redis.call('HINCRBY', SALE, 'confirmed', taken)
  end
  redis.call('HSET', SALE, 'lease', now_ms() + tonumber(ARGV[3]))
  return table.concat(out)

elseif op == 'finish' then
  -- ARGV: token. Opens the bucket for holds; 0 unless `token` loads it.
  if not is_loader(ARGV[2]) then return 0 end
  redis.call('HDEL', SALE, 'loader', 'lease')
  return 1

elseif op == 'buckets' then
  -- How many buckets the sale has (the layout's one stored fact), or nil.
  local f = redis.call('HMGET', SALE, 'total', 'buckets')
  if not f[1] then return false end
  return tonumber(f[2] or '1')

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
  local f = redis.call('HMGET', SALE, 'total', 'remaining', 'held', 'confirmed', 'loader')
  if not f[1] then return {} end
  local oldest = redis.call('ZRANGE', EXPIRY, 0, 0, 'WITHSCORES')
  return {f[1], f[2], f[3], f[4], tostring(redis.call('ZCARD', EXPIRY)), oldest[2] or '',
    f[5] and '1' or '0'}
end

return redis.error_reply('unknown gate operation ' .. tostring(op))
