-- Deletes up to ARGV[1] cached keys registered under the tag sets in KEYS,
-- removing them from their sets (a set that empties disappears).
-- Returns {keys deleted, members left in the sets}; the caller repeats
-- while members are left, so no single call blocks Redis for long.
local budget = tonumber(ARGV[1])
local deleted = 0
for _, tag in ipairs(KEYS) do
  if budget <= 0 then break end
  local members = redis.call('SPOP', tag, budget)
  budget = budget - #members
  -- unpack() is limited by Lua's stack: delete in slices.
  for i = 1, #members, 500 do
    deleted = deleted + redis.call('DEL', unpack(members, i, math.min(i + 499, #members)))
  end
end
local left = 0
for _, tag in ipairs(KEYS) do
  left = left + redis.call('SCARD', tag)
end
return {deleted, left}
