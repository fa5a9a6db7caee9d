-- Writes one cached value unless a newer version is stored, and registers
-- it under its tags.
-- KEYS[1]: the value (a hash); KEYS[2..]: its tag sets.
-- ARGV[1]: version; ARGV[2]: body; ARGV[3]: fresh until (unix ms);
-- ARGV[4]: lifetime (ms), after which the value expires.
-- A tag set lives as long as the longest-lived value registered in it: its
-- expiry is only ever raised, so it never goes before one of its values and
-- never outlives the last of them by more than that value's lifetime.
-- Returns 1: written; 0: refused, a newer version is stored.
local stored = redis.call('HGET', KEYS[1], 'version')
if stored and tonumber(stored) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'body', ARGV[2], 'fresh_until', ARGV[3])
local lifetime = tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], lifetime)
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  -- PTTL is -1 for a set without expiry (just created): always below.
  if redis.call('PTTL', KEYS[i]) < lifetime then
    redis.call('PEXPIRE', KEYS[i], lifetime)
  end
end
return 1
