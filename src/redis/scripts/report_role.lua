-- Records what one process (a role's instance) reports of its dependencies,
-- and forgets the processes that stopped reporting.
-- KEYS[1]: the sorted set of reporting processes, scored by their last
-- report (ms); KEYS[2]: the hash of their reports.
-- ARGV[1]: now (ms); ARGV[2]: the process (`<role>|<instance>`); ARGV[3]:
-- its report (JSON); ARGV[4]: how long a silent process is kept (ms).
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[4]))
for _, process in ipairs(stale) do
  redis.call('HDEL', KEYS[2], process)
  redis.call('ZREM', KEYS[1], process)
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return #stale
