-- KEYS: MQ:dead.  ARGV: how many (0 = all).  Deletes the oldest entries.
local n = tonumber(ARGV[1])
local len = redis.call('LLEN', KEYS[1])
if n <= 0 or n > len then n = len end
if n > 0 then redis.call('LTRIM', KEYS[1], 0, -n - 1) end
return n
