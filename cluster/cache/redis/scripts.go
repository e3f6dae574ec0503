package redis

// The scripts make each write one atomic step: Redis runs a script to completion before any
// other command, so the revision check, the reindexing and the counters can neither
// interleave with another replica's write nor be seen half done, with no MULTI/WATCH retry
// loop. They run as EVALSHA, falling back to EVAL when the server does not know them yet.
// Every key a script touches is passed in KEYS (the six keys of Cache.keys, in that order,
// then for the hold scripts the holds and retaken keys of each job), as Redis requires.
//
// Revisions travel as decimal strings and newer() compares them as such: Lua numbers are
// doubles, exact only up to 2^53, and revisions are uint64s.

// luaNewer is shared by the scripts that compare revisions.
const luaNewer = `
local function newer(a, b) -- a > b, for decimal strings without leading zeros
  if #a ~= #b then return #a > #b end
  return a > b
end
`

// getLua: ARGV = key (as a job name), "id:"..key, "ip:"..address or "" when key is
// not an address. Returns {job, entry JSON} or nil.
const getLua = `
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return {ARGV[1], v} end
local job = redis.call('HGET', KEYS[2], ARGV[2])
if not job and ARGV[3] ~= '' then job = redis.call('HGET', KEYS[2], ARGV[3]) end
if not job then return false end
v = redis.call('HGET', KEYS[1], job)
if not v then return false end
return {job, v}
`

// putLua: ARGV = job, revision, entry JSON, instance count, now (ms), tombstone cutoff
// (ms: tombstones laid before it have expired), then the entry's index keys. Returns 1 if
// it stored the entry, 0 if a newer entry or tombstone kept it out.
const putLua = luaNewer + `
local job, rev = ARGV[1], ARGV[2]
local tomb = redis.call('HGET', KEYS[4], job)
if tomb then
  local at = tonumber(redis.call('ZSCORE', KEYS[5], job))
  if at and at >= tonumber(ARGV[6]) and not newer(rev, tomb) then return 0 end
  -- Expired, or overtaken by this entry: either way it has nothing left to guard.
  redis.call('HDEL', KEYS[4], job)
  redis.call('ZREM', KEYS[5], job)
end
local oldn, oldkeys = 0, {}
local st = redis.call('HGET', KEYS[3], job)
if st then
  local s = cjson.decode(st)
  if newer(s.r, rev) then return 0 end
  oldn, oldkeys = s.n, s.k
end
local keys, new = {}, {}
for i = 7, #ARGV do
  local k = ARGV[i]
  keys[#keys + 1] = k
  new[k] = true
  local owner = redis.call('HGET', KEYS[2], k)
  if owner ~= job then
    -- Another job's claim stands only if that job is at a higher revision.
    local claim = not owner
    if owner then
      local os = redis.call('HGET', KEYS[3], owner)
      claim = not os or not newer(cjson.decode(os).r, rev)
    end
    if claim then redis.call('HSET', KEYS[2], k, job) end
  end
end
for _, k in ipairs(oldkeys) do
  if not new[k] and redis.call('HGET', KEYS[2], k) == job then
    redis.call('HDEL', KEYS[2], k)
  end
end
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], job, ARGV[3])
redis.call('HSET', KEYS[3], job, cjson.encode({r = rev, n = n, k = keys}))
redis.call('HINCRBY', KEYS[6], 'instances', n - oldn)
return 1
`

// luaDropEntry removes a cached entry and the index keys that still point to it.
const luaDropEntry = `
local function dropEntry(job, s) -- s: the job's decoded state
  for _, k in ipairs(s.k) do
    if redis.call('HGET', KEYS[2], k) == job then redis.call('HDEL', KEYS[2], k) end
  end
  redis.call('HDEL', KEYS[1], job)
  redis.call('HDEL', KEYS[3], job)
  -- Not -s.n for none: Lua passes -0 as "-0", which HINCRBY refuses.
  if s.n ~= 0 then redis.call('HINCRBY', KEYS[6], 'instances', -s.n) end
end
`

// deleteLua: ARGV = job, revision, now (ms), tombstone cutoff (ms), max tombstones.
// Returns 1 if it laid a tombstone.
const deleteLua = luaNewer + luaDropEntry + `
local job, rev = ARGV[1], ARGV[2]
local st = redis.call('HGET', KEYS[3], job)
if st then
  local s = cjson.decode(st)
  if newer(s.r, rev) then return 0 end
  dropEntry(job, s)
end
local tomb = redis.call('HGET', KEYS[4], job)
if tomb then
  local at = tonumber(redis.call('ZSCORE', KEYS[5], job))
  if at and at >= tonumber(ARGV[4]) and newer(tomb, rev) then return 0 end
end
redis.call('HSET', KEYS[4], job, rev)
redis.call('ZADD', KEYS[5], ARGV[3], job)
-- Drop expired tombstones, then the oldest beyond the bound.
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[4])
for _, j in ipairs(expired) do redis.call('HDEL', KEYS[4], j) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[4]) end
local extra = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[5])
if extra > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[5], extra) -- member, score, member, score, ...
  for i = 1, #popped, 2 do redis.call('HDEL', KEYS[4], popped[i]) end
end
return 1
`

// setCursorLua: ARGV = revision. Moves the cursor forward only.
const setCursorLua = luaNewer + `
local c = redis.call('HGET', KEYS[6], 'cursor')
if not c or newer(ARGV[1], c) then
  redis.call('HSET', KEYS[6], 'cursor', ARGV[1])
  return 1
end
return 0
`

// luaHolds is shared by the hold scripts. A job's holds are a sorted set of replica ids
// scored by expiry (ms), h; r is the set of its holders told to re-read it.
const luaHolds = luaDropEntry + `
local function forget(job) -- removes the job's entry, if cached, without a tombstone
  local st = redis.call('HGET', KEYS[3], job)
  if st then dropEntry(job, cjson.decode(st)) end
end
local function live(h, r, now) -- drops expired holds and returns how many are left
  redis.call('ZREMRANGEBYSCORE', h, '-inf', now)
  local n = redis.call('ZCARD', h)
  if n == 0 then redis.call('DEL', r) end
  return n
end
local function keep(h, r, now) -- lets both keys expire with the last hold
  local top = redis.call('ZRANGE', h, -1, -1, 'WITHSCORES')
  if not top[2] then return end
  local ttl = tonumber(top[2]) - tonumber(now)
  redis.call('PEXPIRE', h, ttl)
  if redis.call('EXISTS', r) == 1 then redis.call('PEXPIRE', r, ttl) end
end
`

// holdLua: KEYS[7], KEYS[8] = the job's holds and retaken keys; ARGV = replica, now (ms),
// expiry (ms). Returns {"1" if no replica held the job before else "0", drops}.
const holdLua = luaHolds + `
local h, r = KEYS[7], KEYS[8]
local first = live(h, r, ARGV[2]) == 0
redis.call('ZADD', h, ARGV[3], ARGV[1])
keep(h, r, ARGV[2])
return {first and '1' or '0', redis.call('HGET', KEYS[6], 'drops') or '0'}
`

// releaseLua: KEYS[7], KEYS[8] as for holdLua; ARGV = replica, now (ms), job. Returns 1 if
// no replica holds the job any more (its entry is gone then too), else 0.
const releaseLua = luaHolds + `
local h, r = KEYS[7], KEYS[8]
live(h, r, ARGV[2])
redis.call('ZREM', h, ARGV[1])
redis.call('SREM', r, ARGV[1])
if live(h, r, ARGV[2]) > 0 then
  keep(h, r, ARGV[2])
  return 0
end
forget(ARGV[3])
return 1
`

// droppedLua: KEYS[7], KEYS[8] as for holdLua; ARGV = replica, now (ms), job. Counts the
// drop; returns 1 if some replica holds the job (marking the others to re-read it), else
// 0 (and removes its entry).
const droppedLua = luaHolds + `
local h, r = KEYS[7], KEYS[8]
redis.call('HINCRBY', KEYS[6], 'drops', 1)
if live(h, r, ARGV[2]) == 0 then
  forget(ARGV[3])
  return 0
end
for _, x in ipairs(redis.call('ZRANGE', h, 0, -1)) do
  if x ~= ARGV[1] then redis.call('SADD', r, x) end
end
keep(h, r, ARGV[2])
return 1
`

// renewLua: KEYS[7..] = the holds and retaken keys of each job in turn; ARGV = replica,
// now (ms), expiry (ms), then the jobs. Returns the jobs the replica must re-read: those
// it no longer holds (not held again: another replica may have dropped them since) and
// those it was marked to re-read.
const renewLua = luaHolds + `
local out = {}
for i = 4, #ARGV do
  local h, r = KEYS[2 * i - 1], KEYS[2 * i]
  live(h, r, ARGV[2])
  if redis.call('ZSCORE', h, ARGV[1]) then
    redis.call('ZADD', h, ARGV[3], ARGV[1])
    if redis.call('SREM', r, ARGV[1]) == 1 then out[#out + 1] = ARGV[i] end
    keep(h, r, ARGV[2])
  else
    out[#out + 1] = ARGV[i]
  end
end
return out
`
