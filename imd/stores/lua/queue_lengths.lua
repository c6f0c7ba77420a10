-- KEYS: MQ, MQ:processing, MQ:dead.
return {redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2]), redis.call('LLEN', KEYS[3])}
