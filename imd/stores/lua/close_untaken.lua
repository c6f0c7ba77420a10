-- KEYS: order:<order>.  ARGV: now (ms), customer, courier (0: none), record ttl
-- An order no T linked: recorded as closed (so a T that comes later is
-- refused), with nothing to end.  {2, closed_at, ends_at}; {0, ...} closed
-- before; {-1}: a T took it meanwhile.
local record = redis.call('HMGET', KEYS[1], 'taken_at', 'closed_at', 'ends_at')
if record[1] then return {-1} end
if record[2] then return {0, tonumber(record[2]), tonumber(record[3])} end
redis.call('HSET', KEYS[1], 'customer', ARGV[2], 'closed_at', ARGV[1], 'ends_at', ARGV[1])
if ARGV[3] ~= '0' then redis.call('HSET', KEYS[1], 'courier', ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {2, tonumber(ARGV[1]), tonumber(ARGV[1])}
