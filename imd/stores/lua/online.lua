-- include: any_live
-- KEYS: URS:<asker>, dev:<uid>, nodes; ARGV: asker, uid
if ARGV[1] ~= ARGV[2] and redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return -1 end
if any_live(KEYS[2], KEYS[3]) then return 1 end
return 0
