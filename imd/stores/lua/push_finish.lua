-- KEYS: push:inflight, push:sending, push:born, push:current, push:unread,
--       push:last, push:due
-- ARGV: delivery key, the message JSON its last try named, now (ms)
-- The push is over (answered, refused or given up).  A newer message that
-- joined it after that try was taken was not named by it: back to
-- push:last (unless a newer one waits there), due now -- a push of its own.
local record = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if not record then return 0 end
local to, packet = string.match(record, '^%d+ %d+ %d+ (%d+) %-?%d+ (.*)$')
if not to then return 1 end
if redis.call('HGET', KEYS[4], to) == ARGV[1] then redis.call('HDEL', KEYS[4], to) end
if packet ~= ARGV[2] and tonumber(redis.call('HGET', KEYS[5], to) or '0') > 0 then
  redis.call('HSETNX', KEYS[6], to, packet)
  redis.call('ZADD', KEYS[7], 'NX', ARGV[3], to)
  return 2
end
return 1
