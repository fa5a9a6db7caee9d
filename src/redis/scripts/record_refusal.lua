-- Counts one webhook the intake refused, by answer and school, in the hash
-- of its minute.
-- KEYS[1]: the minute's hash.
-- ARGV[1]: the field, `<answer>|<school>`; ARGV[2]: the field when the hash
-- already holds ARGV[3] fields (`<answer>|other`), so that schools named by
-- unsigned requests cannot grow it without bound; ARGV[4]: how long the
-- hash is kept (ms).
local field = ARGV[1]
if redis.call('HEXISTS', KEYS[1], field) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  field = ARGV[2]
end
redis.call('HINCRBY', KEYS[1], field, 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
