-- include: restore
-- KEYS: order:<order>, links:<pair>.  ARGV: courier, customer, before,
-- taken_at, open ttl (s), now (ms), order.  1: restored; 0: Redis has a
-- record (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
restore(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
return 1
