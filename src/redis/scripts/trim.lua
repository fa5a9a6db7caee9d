-- Trims acknowledged entries beyond a length bound.
-- KEYS[1]: the events stream. ARGV[1]: entries to keep once acknowledged.
-- Trims at the smallest of: the oldest entry past the length bound, and the
-- oldest entry some group has not acknowledged (its oldest pending entry, or
-- the first entry after its last-delivered id). Without a group nothing is
-- trimmed: nothing has been acknowledged. Returns how many entries went.
local key = KEYS[1]
local keep = tonumber(ARGV[1])
local excess = redis.call('XLEN', key) - keep
if excess <= 0 then return 0 end
if excess > 10000 then excess = 10000 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
local function successor(id)
  local ms, seq = parse(id)
  return string.format('%d-%d', ms, seq + 1)
end
local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
local cut = successor(oldest[#oldest][1])
local groups = redis.call('XINFO', 'GROUPS', key)
if #groups == 0 then return 0 end
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local unfinished = successor(info['last-delivered-id'])
  if info['pending'] > 0 then
    local summary = redis.call('XPENDING', key, info['name'])
    unfinished = summary[2]
  end
  if less(unfinished, cut) then cut = unfinished end
end
return redis.call('XTRIM', key, 'MINID', cut)
