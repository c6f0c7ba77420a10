-- KEYS: push:inflight, push:sending.  ARGV: delivery key, when (ms).
-- Try it again then (unless it is over meanwhile).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
