-- KEYS: MQ, processing.  {len MQ, len processing, oldest entry or false}
local oldest = redis.call('LINDEX', KEYS[2], -1)
if not oldest then oldest = redis.call('LINDEX', KEYS[1], -1) end
return {redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2]), oldest}
