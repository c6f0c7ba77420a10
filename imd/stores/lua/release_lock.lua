-- KEYS: lock.  ARGV: token.  Frees the lock, only the caller's own.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
