-- Deletes a key only if it still holds the caller's token: releases a
-- single-flight cache lock or a consumer-name lease, never another holder's.
-- KEYS[1]: the lock or lease; ARGV[1]: the holder's token.
-- Returns 1: released; 0: held by another (or already gone).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
