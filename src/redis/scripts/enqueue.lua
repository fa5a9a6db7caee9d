-- Appends an accepted webhook unless its event was accepted within the
-- dedup window: the duplicate check and the append are one atomic step.
-- KEYS[1]: the events stream; KEYS[2]: the set of the event's partition in
-- the current time bucket; KEYS[3..]: the same partition's sets of the
-- earlier buckets the window reaches, the latest first.
-- ARGV[1]: the event's fingerprint, a signed 64-bit decimal (so that the
-- sets stay intsets); ARGV[2]: seconds a bucket's set lives from its first
-- member; ARGV[3..]: the entry's field/value pairs.
-- Returns the new entry id when appended, nil for a duplicate.
for i = 2, #KEYS do
  if redis.call('SISMEMBER', KEYS[i], ARGV[1]) == 1 then
    return false
  end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
-- NX (Redis 7.0): the first member sets the lifetime; later ones keep it.
redis.call('EXPIRE', KEYS[2], ARGV[2], 'NX')
return id
