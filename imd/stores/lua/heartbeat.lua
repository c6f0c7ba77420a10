-- KEYS: nodes.  ARGV: own node, heartbeat ms.  Also forgets nodes silent for a day.
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - 86400000)
return 1
