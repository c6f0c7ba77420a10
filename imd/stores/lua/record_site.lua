-- KEYS: geo:couriers, site:<uid>; ARGV: uid, longitude, latitude, ts
redis.call('GEOADD', KEYS[1], ARGV[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'longitude', ARGV[2], 'latitude', ARGV[3], 'ts', ARGV[4])
return 1
