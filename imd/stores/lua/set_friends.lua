-- KEYS: URS:<a>, URS:<b>, kept:<a>, kept:<b>.  ARGV: SADD or SREM, a, b
redis.call(ARGV[1], KEYS[1], ARGV[3])
redis.call(ARGV[1], KEYS[2], ARGV[2])
redis.call(ARGV[1], KEYS[3], ARGV[3])
redis.call(ARGV[1], KEYS[4], ARGV[2])
return 1
