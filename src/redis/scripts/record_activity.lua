-- Adds one worker's tally of a minute to the fleet's activity in that minute.
-- KEYS[1]: the minute's hash.
-- ARGV[1]: events applied; ARGV[2]: the sum of their freshness (ms);
-- ARGV[3]: how many freshness figures the sum holds; ARGV[4]: the largest
-- of them (ms); ARGV[5]: the largest backlog seen (undelivered + pending);
-- ARGV[6]: how long the hash is kept (ms).
-- Counts add up across workers; the largest figures keep the largest.
redis.call('HINCRBY', KEYS[1], 'applied', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'freshness_sum_ms', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'freshness_count', ARGV[3])
local function raise(field, value)
  local current = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  if tonumber(value) > current then
    redis.call('HSET', KEYS[1], field, value)
  end
end
raise('freshness_max_ms', ARGV[4])
raise('backlog_max', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
