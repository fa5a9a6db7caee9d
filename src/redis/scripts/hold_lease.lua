-- Takes or renews the lease on a consumer name.
-- KEYS[1]: the lease. ARGV[1]: this worker's token; ARGV[2]: lease in ms.
-- Returns 1: held (renewed, or taken again after Redis lost it); 0: another holds it.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
