-- Raises the fleet's stream shard count to ARGV[1] if it is lower; the
-- count never goes down (shards beyond a lowered count still hold events to
-- drain). Returns the count after the call.
-- KEYS[1]: <prefix>stream-shards
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('SET', KEYS[1], wanted)
  return wanted
end
return current
