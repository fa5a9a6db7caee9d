-- Moves retries that are due back onto the events stream, atomically.
-- KEYS[1]: the retry set (members: JSON arrays of field/value pairs, scored
-- by due time in ms); KEYS[2]: the events stream.
-- ARGV[1]: now (ms); ARGV[2]: most to move.
-- Returns how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(member)))
  redis.call('ZREM', KEYS[1], member)
end
return #due
