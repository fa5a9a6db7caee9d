-- Appends an accepted webhook unless its event id was seen within the
-- dedup window: the duplicate check and the append are one atomic step.
-- KEYS[1]: the seen key; KEYS[2]: the events stream.
-- ARGV[1]: dedup window in seconds; ARGV[2..]: the entry's field/value pairs.
-- Returns {1, new id} when appended, {0, earlier id} for a duplicate.
local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return {1, id}
