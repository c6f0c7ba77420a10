-- KEYS: push:due, push:inflight, push:born.  ARGV: delay (ms).
-- {users waiting for their window, pushes in flight, when the oldest
-- pending push's window opened (ms) or false}
local oldest = false
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first > 0 then oldest = tonumber(first[2]) - tonumber(ARGV[1]) end
local born = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if #born > 0 and (not oldest or tonumber(born[2]) < oldest) then oldest = tonumber(born[2]) end
return {redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[2]), oldest and string.format('%d', oldest) or false}
