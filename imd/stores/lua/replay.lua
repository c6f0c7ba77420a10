-- KEYS: MQ:dead, MQ.  ARGV: how many (0 = all).  Moves the oldest entries of
-- MQ:dead to the tail of MQ, where the migrator claims its next batch, the
-- oldest last (so it is claimed first).  Returns how many moved.
local n = tonumber(ARGV[1])
local len = redis.call('LLEN', KEYS[1])
if n <= 0 or n > len then n = len end
if n == 0 then return 0 end
local entries = redis.call('LRANGE', KEYS[1], -n, -1)
redis.call('LTRIM', KEYS[1], 0, -n - 1)
for i = 1, #entries, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(entries, i, math.min(i + 999, #entries)))
end
return n
