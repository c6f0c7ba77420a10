-- KEYS: URS:<from>, typing:<from>:<to>.  ARGV: to, 1|0 (typing), window ms.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] == '0' or ARGV[3] == '0' then return 1 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 1 end
return 2
