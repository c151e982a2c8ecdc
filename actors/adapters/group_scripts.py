"""The Lua scripts of the kept near-duplicate groups (``group_store.py`` runs them; the key layout is there).

Each script is one atomic step of Redis's single thread, so two indexers that join, leave or split groups at
the same moment are serialized: no step ever sees another half done. Every script that writes a state first
checks that the state is still kept under the generation the caller read (``P:dup:kept[field] == gen``): a
retired state's keys are being deleted, and a late write must not bring them back. Keys a script reaches
through data (a group's members ``<ns>:m:<gid>``) are built inside it, which a single Redis (or a Sentinel
primary) allows; Redis Cluster would need every state's keys under one hash tag.

Sorted sets with every score 0 hold ids in byte order: ``ZRANGE key 0 0`` is a group's smallest id, and
``ZRANGEBYLEX`` pages the groups by it.
"""

from __future__ import annotations

# shared by the writing scripts: ARGV[1] field, ARGV[2] gen, ARGV[3] ns (P:dup:<gen>); KEYS[1] the kept hash
_PRELUDE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -1 end
local ns = ARGV[3]
local of, first, dirty, meta = ns .. ':of', ns .. ':first', ns .. ':dirty', ns .. ':meta'
local function gkey(g) return ns .. ':m:' .. g end
local function smallest(key) return redis.call('ZRANGE', key, 0, 0)[1] end
local function put(key, g, ids)  -- ids into group g (its set and the image -> group hash), 500 at a time
  for i = 1, #ids, 500 do
    local z, h = {}, {}
    for j = i, math.min(i + 499, #ids) do
      z[#z + 1] = 0; z[#z + 1] = ids[j]; h[#h + 1] = ids[j]; h[#h + 1] = g
    end
    redis.call('ZADD', key, unpack(z))
    redis.call('HSET', of, unpack(h))
  end
end
"""

# Join image ARGV[5] to its neighbours ARGV[6..]: every group they are in and every single one of them become one
# group. The largest group absorbs the others (union by size: an image moves O(log n) times in all). Images
# without a vector (ARGV[4] .. id missing: deleted since the range query) are left out, and nothing happens
# when ARGV[5] itself is gone. A group merged while dirty (waiting for a split) makes the result dirty.
# Returns how many images moved or were added; -1 retired state, -2 the image is gone.
JOIN = (
    _PRELUDE
    + """
local head, x = ARGV[4], ARGV[5]
local function alive(id) return redis.call('EXISTS', head .. id) == 1 end
if not alive(x) then return -2 end
local ids = {x}
for i = 6, #ARGV do
  if ARGV[i] ~= x and alive(ARGV[i]) then ids[#ids + 1] = ARGV[i] end
end
if #ids == 1 then return 0 end
local groups, seen, singles = {}, {}, {}
for _, id in ipairs(ids) do
  local g = redis.call('HGET', of, id)
  if not g then singles[#singles + 1] = id
  elseif not seen[g] then seen[g] = true; groups[#groups + 1] = g end
end
if #singles == 0 and #groups == 1 then return 0 end
local target, size = nil, -1
for _, g in ipairs(groups) do
  local n = redis.call('ZCARD', gkey(g))
  if n > size then target, size = g, n end
end
if target == nil then
  target = tostring(redis.call('HINCRBY', meta, 'seq', 1))
else
  redis.call('ZREM', first, smallest(gkey(target)))
end
local moved, tkey = #singles, gkey(target)
for _, g in ipairs(groups) do
  if g ~= target then
    local members = redis.call('ZRANGE', gkey(g), 0, -1)
    redis.call('ZREM', first, members[1])
    put(tkey, target, members)
    redis.call('DEL', gkey(g))
    if redis.call('SREM', dirty, g) == 1 then redis.call('SADD', dirty, target) end
    moved = moved + #members
  end
end
put(tkey, target, singles)
redis.call('ZADD', first, 0, smallest(tkey))
return moved
"""
)

# Take image ARGV[4] out of its group. A group left with one image is dissolved; a larger one is marked dirty
# (the image may have been its only bridge) until a split recomputes it. Returns the group's id when it is
# dirty now, "" when there is nothing to split, -1 for a retired state.
LEAVE = (
    _PRELUDE
    + """
local x = ARGV[4]
local g = redis.call('HGET', of, x)
if not g then return '' end
local key = gkey(g)
redis.call('HDEL', of, x)
redis.call('ZREM', key, x)
redis.call('ZREM', first, x)
if redis.call('ZCARD', key) < 2 then
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    redis.call('HDEL', of, id)
    redis.call('ZREM', first, id)
  end
  redis.call('DEL', key)
  redis.call('SREM', dirty, g)
  return ''
end
redis.call('ZADD', first, 0, smallest(key))
redis.call('SADD', dirty, g)
return g
"""
)

# Split group ARGV[4] into the components the caller computed from its members' range queries, if its members
# are still exactly the ARGV[5] ids that follow (a join or a leave since then: 0, the caller reads it again).
# After the snapshot come the components, each as its length then its ids (sorted, largest component first):
# the first keeps the group's id, the others get new ones, single images leave the groups.
# Returns 1 when applied, 0 when the group changed meanwhile, -1 for a retired state.
SPLIT = (
    _PRELUDE
    + """
local g, n = ARGV[4], tonumber(ARGV[5])
local key = gkey(g)
if redis.call('ZCARD', key) ~= n then return 0 end
for i = 6, 5 + n do
  if not redis.call('ZSCORE', key, ARGV[i]) then return 0 end
end
if n > 0 then redis.call('ZREM', first, smallest(key)) end
redis.call('DEL', key)
local i, part = 6 + n, 0
while i <= #ARGV do
  local len = tonumber(ARGV[i])
  local ids = {}
  for j = i + 1, i + len do ids[#ids + 1] = ARGV[j] end
  part = part + 1
  if len >= 2 then
    local id = (part == 1) and g or tostring(redis.call('HINCRBY', meta, 'seq', 1))
    put(gkey(id), id, ids)
    redis.call('ZADD', first, 0, ids[1])
  else
    redis.call('HDEL', of, ids[1])
  end
  i = i + len + 1
end
redis.call('SREM', dirty, g)
return 1
"""
)

# One page of groups, read in one step (a consistent snapshot). KEYS[1] the kept hash; ARGV[1] field, ARGV[2]
# P:dup:, ARGV[3] cursor (the smallest id of the previous page's last group; "" first), ARGV[4] limit,
# ARGV[5] how many ids a page may hold (a page stops before the group that would pass it, unless it is the
# first). Returns {status, scanned} while the state is missing ("none") or building, else
# {"ready", scanned, total groups, next cursor ("" on the last page), group, group, ...}, each group its ids
# in order.
PAGE = """
local gen = redis.call('HGET', KEYS[1], ARGV[1])
if not gen then return {'none', '0'} end
local ns = ARGV[2] .. gen
local meta = redis.call('HMGET', ns .. ':meta', 'status', 'scanned')
if meta[1] ~= 'ready' then return {meta[1] or 'none', meta[2] or '0'} end
local first, limit, budget = ns .. ':first', tonumber(ARGV[4]), tonumber(ARGV[5])
local heads
if ARGV[3] == '' then
  heads = redis.call('ZRANGE', first, 0, limit)
else
  heads = redis.call('ZRANGEBYLEX', first, '(' .. ARGV[3], '+', 'LIMIT', 0, limit + 1)
end
local out = {'ready', meta[2] or '0', redis.call('ZCARD', first), ''}
local taken, ids = 0, 0
for i = 1, math.min(#heads, limit) do
  local g = redis.call('HGET', ns .. ':of', heads[i]) or ''
  local members = redis.call('ZRANGE', ns .. ':m:' .. g, 0, -1)
  if taken > 0 and ids + #members > budget then break end
  if #members >= 2 then out[#out + 1] = members end  -- always, unless a bug broke the layout
  taken, ids = taken + 1, ids + #members
end
if #heads > taken then out[4] = heads[taken] end
return out
"""

# Keep a state: the generation already kept under ARGV[1], or a new one (KEYS[2] counts them) with its meta.
# ARGV: field, P:dup:, model, threshold, now, layout.
ADOPT = """
local gen = redis.call('HGET', KEYS[1], ARGV[1])
if gen then return gen end
gen = tostring(redis.call('INCR', KEYS[2]))
redis.call('HSET', ARGV[2] .. gen .. ':meta', 'model', ARGV[3], 'threshold', ARGV[4], 'status', 'building',
  'cursor', '0', 'scanned', '0', 'started_at', ARGV[5], 'layout', ARGV[6])
redis.call('HSET', KEYS[1], ARGV[1], gen)
return gen
"""

# Stop keeping a state: out of the kept hash (joins stop), into KEYS[2], the generations to delete.
RETIRE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# A build's progress: the SCAN cursor after the batch it joined (ARGV[4]), how many images that batch held
# (ARGV[5]), whether the scan is complete (ARGV[6] = 1: the state is ready), the time (ARGV[7]).
ADVANCE = (
    _PRELUDE
    + """
redis.call('HSET', meta, 'cursor', ARGV[4])
redis.call('HINCRBY', meta, 'scanned', ARGV[5])
if ARGV[6] == '1' and redis.call('HGET', meta, 'status') ~= 'ready' then
  redis.call('HSET', meta, 'status', 'ready', 'ready_at', ARGV[7])
end
return 1
"""
)

# Delete up to ARGV[2] groups of a retired generation (ns ARGV[1]); once none is left, its other keys and its
# entry in KEYS[1] (the generations to delete, ARGV[3] this one). Returns how many groups went (0: all gone).
DROP = """
local ns = ARGV[1]
local heads = redis.call('ZRANGE', ns .. ':first', 0, tonumber(ARGV[2]) - 1)
for _, head in ipairs(heads) do
  local g = redis.call('HGET', ns .. ':of', head)
  if g then
    local members = redis.call('ZRANGE', ns .. ':m:' .. g, 0, -1)
    for i = 1, #members, 500 do
      redis.call('HDEL', ns .. ':of', unpack(members, i, math.min(i + 499, #members)))
    end
    redis.call('DEL', ns .. ':m:' .. g)
  end
  redis.call('ZREM', ns .. ':first', head)
end
if #heads == 0 then
  redis.call('DEL', ns .. ':of', ns .. ':first', ns .. ':dirty', ns .. ':meta')
  redis.call('SREM', KEYS[1], ARGV[3])
end
return #heads
"""

__all__ = ["ADOPT", "ADVANCE", "DROP", "JOIN", "LEAVE", "PAGE", "RETIRE", "SPLIT"]
