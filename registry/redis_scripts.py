"""The Lua scripts of the Redis store: every change that touches more than one key happens in one of them, so it
happens entirely or not at all (see `registry.redis_store` for the key layout)."""

CHUNKS = """
local function chunk_keys(prefix, ref)
  local keys = {}
  if not ref then return keys end
  local id, n = string.match(ref, '^(%S+) (%d+)$')
  for i = 0, tonumber(n) - 1 do keys[#keys + 1] = prefix .. 'blob:' .. id .. ':' .. i end
  return keys
end
local function staged(prefix, mode, value)
  if mode ~= 'c' then return true end
  for _, k in ipairs(chunk_keys(prefix, value)) do
    if redis.call('EXISTS', k) == 0 then return false end
  end
  return true
end
local function put_payload(prefix, key, field, mode, value)
  if mode == 'i' then
    redis.call('HSET', key, field, value)
    redis.call('HDEL', key, field .. '@')
  else
    redis.call('HSET', key, field .. '@', value)
    redis.call('HDEL', key, field)
    for _, k in ipairs(chunk_keys(prefix, value)) do redis.call('PERSIST', k) end
  end
end
local function drop_chunks(prefix, ref)
  for _, k in ipairs(chunk_keys(prefix, ref)) do redis.call('UNLINK', k) end
end
"""

CREATE_MODEL = """
-- KEYS: models, model, stream   ARGV: name, record, group, quoted name
if redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.error_reply('CONFLICT model ' .. ARGV[4] .. ' already exists')
end
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[3], '0', 'MKSTREAM')
return 1
"""

DELETE_MODEL = """
-- KEYS: models, model   ARGV: name, key pattern, channel, message, quoted name
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[5] .. ' does not exist')
end
redis.call('SREM', KEYS[1], ARGV[1])
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', 1000)
  cursor = page[1]
  for _, k in ipairs(page[2]) do redis.call('UNLINK', k) end
until cursor == '0'
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

COMMIT_VERSION = (
    CHUNKS
    + """
-- KEYS: model, fence, vseq, versions, op
-- ARGV: fence|'', number|'', meta, weights mode, weights, state mode, state, prefix, quoted name, op ttl, pinned
local done = redis.call('GET', KEYS[5])
if done then return tonumber(done) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[9] .. ' does not exist')
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('CONFLICT update lock of ' .. ARGV[9] .. ' was lost (fencing token '
    .. ARGV[1] .. ' is stale)')
end
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local top = redis.call('ZRANGE', KEYS[4], -1, -1)
if top[1] and tonumber(top[1]) > last then last = tonumber(top[1]) end
local v = last + 1
if ARGV[2] ~= '' then
  v = tonumber(ARGV[2])
  if v <= last then
    return redis.error_reply('CONFLICT version ' .. ARGV[2] .. ' of ' .. ARGV[9]
      .. ' is not after the newest (' .. last .. ')')
  end
end
if not staged(ARGV[8], ARGV[4], ARGV[5]) or not staged(ARGV[8], ARGV[6], ARGV[7]) then
  return redis.error_reply('CONFLICT the chunks of this commit expired before it; commit again')
end
local key = ARGV[8] .. 'v:' .. v
put_payload(ARGV[8], key, 'weights', ARGV[4], ARGV[5])
put_payload(ARGV[8], key, 'state', ARGV[6], ARGV[7])
redis.call('HSET', key, 'meta', ARGV[3])
if ARGV[11] == '1' then redis.call('HSET', key, 'pinned', '1') end
redis.call('ZADD', KEYS[4], v, v)
redis.call('SET', KEYS[3], v)
redis.call('SET', KEYS[5], v, 'PX', ARGV[10])
return v
"""
)

REWRITE_STATE = (
    CHUNKS
    + """
-- KEYS: version   ARGV: mode, value, prefix, message if absent
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOTFOUND ' .. ARGV[4]) end
if not staged(ARGV[3], ARGV[1], ARGV[2]) then
  return redis.error_reply('CONFLICT the chunks of this state expired before it was written; write it again')
end
local old = redis.call('HGET', KEYS[1], 'state@')
put_payload(ARGV[3], KEYS[1], 'state', ARGV[1], ARGV[2])
if old and old ~= ARGV[2] then drop_chunks(ARGV[3], old) end
return 1
"""
)

DELETE_VERSION = (
    CHUNKS
    + """
-- KEYS: version, live, versions, promotions   ARGV: version, prefix, message if absent, message if live
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOTFOUND ' .. ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then return redis.error_reply('CONFLICT ' .. ARGV[4]) end
drop_chunks(ARGV[2], redis.call('HGET', KEYS[1], 'weights@'))
drop_chunks(ARGV[2], redis.call('HGET', KEYS[1], 'state@'))
redis.call('UNLINK', KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)

PIN_VERSION = """
-- KEYS: version   ARGV: '1' pin / '0' unpin, message if absent
-- The version's own hash holds the flag, so deleting the version deletes it, and `PRUNE_VERSION` reads it in the
-- same step as it deletes: a pin lands on a stored version (which then stays) or finds it gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOTFOUND ' .. ARGV[2]) end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'pinned', '1') else redis.call('HDEL', KEYS[1], 'pinned') end
return 1
"""

PRUNE_VERSION = (
    CHUNKS
    + """
-- KEYS: version, live, versions, promotions   ARGV: version, prefix, promotions retention saw
-- Returns 1 deleted, 0 kept: gone already, live, pinned, or promoted since retention looked.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'pinned') == 1 then return 0 end
if redis.call('LLEN', KEYS[4]) > tonumber(ARGV[3]) then return 0 end
drop_chunks(ARGV[2], redis.call('HGET', KEYS[1], 'weights@'))
drop_chunks(ARGV[2], redis.call('HGET', KEYS[1], 'state@'))
redis.call('UNLINK', KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)

PROMOTE = """
-- KEYS: model, live, version, promotions, op, promotion record
-- ARGV: expected ('' unset, 'null' none, else a number), version, by JSON, at, channel, model JSON, quoted name,
--       op ttl, signed record ('' unsigned: the record is removed), the record it was signed after ('' none)
-- Returns 1 promoted, 0 the pointer did not hold `expected`, 2 the record changed since it was read (sign again).
local done = redis.call('GET', KEYS[5])
if done then return tonumber(done) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[7] .. ' does not exist')
end
local current = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' then
  local matches = (ARGV[1] == 'null' and not current) or (current and current == ARGV[1])
  if not matches then
    redis.call('SET', KEYS[5], 0, 'PX', ARGV[8])
    return 0
  end
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[7] .. ' has no version ' .. ARGV[2])
end
if ARGV[9] ~= '' then
  if (redis.call('GET', KEYS[6]) or '') ~= ARGV[10] then return 2 end
  redis.call('SET', KEYS[6], ARGV[9])
else
  redis.call('DEL', KEYS[6])
end
local previous = current or 'null'
redis.call('RPUSH', KEYS[4], '{"by":' .. ARGV[3] .. ',"at":' .. ARGV[4] .. ',"previous":' .. previous .. '}')
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[5], '{"model":' .. ARGV[6] .. ',"version":' .. ARGV[2] .. '}')
redis.call('SET', KEYS[5], 1, 'PX', ARGV[8])
return 1
"""

ACK = (
    CHUNKS
    + """
-- KEYS: model, fence, acked, experiences, stream, carried, op, held, sgen
-- ARGV: fence|'', from, upto, experience JSON, group, quoted name, op ttl,
--       carried ids consumed (JSON list), samples deferred (JSON object id -> batch; the key "" is ignored),
--       held-out generation read, held-out index JSON, new part ('' none), its mode, its value,
--       parts left without a live row (JSON list), key prefix
-- Returns 1, or 'RETRY' when the held-out store changed since its index was read (nothing is written then).
if redis.call('GET', KEYS[7]) then return 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[6] .. ' does not exist')
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('CONFLICT update lock of ' .. ARGV[6] .. ' was lost (fencing token '
    .. ARGV[1] .. ' is stale)')
end
local acked = tonumber(redis.call('GET', KEYS[3]) or '0')
if acked ~= tonumber(ARGV[2]) then
  return redis.error_reply('CONFLICT samples of ' .. ARGV[6] .. ' were consumed by another update since this claim')
end
if (redis.call('HGET', KEYS[8], 'gen') or '0') ~= ARGV[10] then return 'RETRY' end
if ARGV[12] ~= '' and not staged(ARGV[16], ARGV[13], ARGV[14]) then
  return redis.error_reply('CONFLICT the chunks of this held-out part expired before it; acknowledge again')
end
local upto = tonumber(ARGV[3])
if upto > acked then
  redis.call('SET', KEYS[3], upto)
  local cursor = string.format('%d-0', acked + 1)
  local last = string.format('%d-0', upto)
  while true do
    local rows = redis.call('XPENDING', KEYS[5], ARGV[5], cursor, last, 1000)
    if #rows == 0 then break end
    local ids = {}
    for i, row in ipairs(rows) do ids[i] = row[1] end
    redis.call('XACK', KEYS[5], ARGV[5], unpack(ids))
    if #rows < 1000 then break end
    cursor = '(' .. rows[#rows][1]
  end
  -- every entry up to here is consumed (samples pending again are tracked in P carried): the stream keeps only
  -- what waits
  redis.call('XTRIM', KEYS[5], 'MINID', string.format('%d-0', upto + 1))
end
for _, id in ipairs(cjson.decode(ARGV[8])) do redis.call('HDEL', KEYS[6], id) end
for id, seq in pairs(cjson.decode(ARGV[9])) do
  if id ~= '' then redis.call('HSET', KEYS[6], id, seq) end
end
if ARGV[12] ~= '' then put_payload(ARGV[16], KEYS[8], 'p:' .. ARGV[12], ARGV[13], ARGV[14]) end
for _, part in ipairs(cjson.decode(ARGV[15])) do
  drop_chunks(ARGV[16], redis.call('HGET', KEYS[8], 'p:' .. part .. '@'))
  redis.call('HDEL', KEYS[8], 'p:' .. part, 'p:' .. part .. '@')
end
redis.call('HSET', KEYS[8], 'index', ARGV[11], 'gen', tostring(tonumber(ARGV[10]) + 1))
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('INCR', KEYS[9])
redis.call('SET', KEYS[7], 1, 'PX', ARGV[7])
return 1
"""
)

QUARANTINE = """
-- KEYS: model, fence, quarantine, carried, sgen
-- ARGV: fence|'', quoted name, then id, record JSON, id, record JSON, ...
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[2] .. ' does not exist')
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('CONFLICT update lock of ' .. ARGV[2] .. ' was lost (fencing token '
    .. ARGV[1] .. ' is stale)')
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HDEL', KEYS[4], ARGV[i])
end
redis.call('INCR', KEYS[5])
return 1
"""

RELEASE = """
-- KEYS: model, quarantine, carried, exempt, sgen   ARGV: quoted name, ids...
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[1] .. ' does not exist')
end
local released = {}
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[2], ARGV[i])
  if raw then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('HSET', KEYS[3], ARGV[i], cjson.decode(raw)['seq'])
    redis.call('SADD', KEYS[4], ARGV[i])
    released[#released + 1] = ARGV[i]
  end
end
if #released > 0 then redis.call('INCR', KEYS[5]) end
return released
"""

UPDATES = """
local function put_update(keys, id, record, active)
  -- keys: updates, useq, uorder, active.  A new id gets the next sequence number (its place in the order pages
  -- follow); a queued or running one is in the active index, a finished one is not.
  local seq = redis.call('ZSCORE', keys[3], id)
  if not seq then
    seq = redis.call('INCR', keys[2])
    redis.call('ZADD', keys[3], seq, id)
  end
  redis.call('HSET', keys[1], id, record)
  if active == '1' then redis.call('ZADD', keys[4], seq, id) else redis.call('ZREM', keys[4], id) end
end
"""

PUT_UPDATE = (
    UPDATES
    + """
-- KEYS: model, updates, useq, uorder, active   ARGV: update id, record JSON, quoted name, active ('1' / '0')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[3] .. ' does not exist')
end
put_update({KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, ARGV[1], ARGV[2], ARGV[4])
return 1
"""
)

CREATE_UPDATE = (
    UPDATES
    + """
-- KEYS: model, updates, useq, uorder, active
-- ARGV: update id, record JSON, quoted name, max queued ('' none), join ('1' / '0')
-- Returns {'stored' | 'joined' | 'created', record JSON} or {'full', number queued}: the count and the write are
-- one step, so concurrent requests never queue more than the limit.  Only the active index is read (queued and
-- running updates), never the history.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[3] .. ' does not exist')
end
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if stored then return {'stored', stored} end
local queued, newest, newest_at, newest_id = 0, nil, 0, ''
local ids = redis.call('ZRANGE', KEYS[5], 0, -1)
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local update = cjson.decode(raw)
    if update.status == 'queued' then
      queued = queued + 1
      local at = tonumber(update.created_at) or 0
      if not newest or at > newest_at or (at == newest_at and id > newest_id) then
        newest, newest_at, newest_id = raw, at, id
      end
    end
  end
end
if ARGV[5] == '1' and newest then return {'joined', newest} end
if ARGV[4] ~= '' and queued >= tonumber(ARGV[4]) then return {'full', tostring(queued)} end
put_update({KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, ARGV[1], ARGV[2], '1')
return {'created', ARGV[2]}
"""
)

TRIM_UPDATES = """
-- KEYS: updates, uorder, active, cancel   ARGV: finished updates to keep
-- Deletes the oldest finished updates beyond the newest ARGV[1]: among the oldest (excess + active) entries of the
-- order at least `excess` are finished, so the work is bounded by what is deleted plus the active ones.
local active = redis.call('ZCARD', KEYS[3])
local excess = redis.call('ZCARD', KEYS[2]) - active - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local deleted = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess + active - 1)) do
  if deleted >= excess then break end
  if not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('HDEL', KEYS[1], id)
    redis.call('SREM', KEYS[4], id)
    redis.call('ZREM', KEYS[2], id)
    deleted = deleted + 1
  end
end
return deleted
"""

REQUEST_CANCEL = """
-- KEYS: model, updates, cancel   ARGV: update id, quoted name, quoted id
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[2] .. ' does not exist')
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[2] .. ' has no update ' .. ARGV[3])
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

GUARDED_SET = """
-- KEYS: model, key   ARGV: value, ttl ms, quoted name
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[3] .. ' does not exist')
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

GUARDED_SADD = """
-- KEYS: model, set   ARGV: quoted name, members...
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[1] .. ' does not exist')
end
for i = 2, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
"""

ACQUIRE_LOCK = """
-- KEYS: model, lock, fence, global counter   ARGV: ttl ms, owner, quoted name
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOTFOUND model ' .. ARGV[3] .. ' does not exist')
end
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local token = redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[2], token .. ' ' .. ARGV[2], 'PX', ARGV[1])
redis.call('SET', KEYS[3], token)
return token
"""

REFRESH_LOCK = """
-- KEYS: lock   ARGV: token, ttl ms
local held = redis.call('GET', KEYS[1])
if not held or string.match(held, '^(%d+)') ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

RELEASE_LOCK = """
-- KEYS: lock   ARGV: token
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^(%d+)') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
