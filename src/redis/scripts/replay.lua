-- Puts dead letters back on the events stream with fresh attempts.
-- KEYS[1]: the dead-letter stream; KEYS[2]: the events stream.
-- ARGV[1]: the name of the field that records the dead letter replayed;
-- ARGV[2]: n, the number of event field names that follow;
-- ARGV[3..n+2]: the fields an entry carries from one life to the next;
-- ARGV[n+3..]: dead-letter ids.
-- Each found entry is appended to the events stream and deleted from the
-- dead letters in the same atomic script, so a crash neither loses nor
-- doubles it. Returns {{id, new id, ...}, {missing id, ...}}.
local replayed_from = ARGV[1]
local count = tonumber(ARGV[2])
local carried = {}
for i = 3, count + 2 do carried[ARGV[i]] = true end
local replayed, missing = {}, {}
for a = count + 3, #ARGV do
  local id = ARGV[a]
  local found = redis.call('XRANGE', KEYS[1], id, id)
  local keep = {}
  if #found == 1 then
    local fields = found[1][2]
    for i = 1, #fields, 2 do
      if carried[fields[i]] then
        table.insert(keep, fields[i])
        table.insert(keep, fields[i + 1])
      end
    end
  end
  if #keep == 0 then
    table.insert(missing, id)
  else
    table.insert(keep, replayed_from)
    table.insert(keep, id)
    local new_id = redis.call('XADD', KEYS[2], '*', unpack(keep))
    redis.call('XDEL', KEYS[1], id)
    table.insert(replayed, id)
    table.insert(replayed, new_id)
  end
end
return {replayed, missing}
