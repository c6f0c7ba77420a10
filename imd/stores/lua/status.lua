-- KEYS: MQ, MQ:processing, MQ:dead, MQ:lock.  One atomic snapshot:
-- {len MQ, its oldest entry, len processing, its oldest, len dead, lock holder, lock ms left}.
return {redis.call('LLEN', KEYS[1]), redis.call('LINDEX', KEYS[1], -1),
        redis.call('LLEN', KEYS[2]), redis.call('LINDEX', KEYS[2], -1),
        redis.call('LLEN', KEYS[3]), redis.call('GET', KEYS[4]), redis.call('PTTL', KEYS[4])}
