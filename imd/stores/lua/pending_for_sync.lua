-- include: take_tokens
-- KEYS: pending:<uid>, budget:history:<uid>.  ARGV: pos, rate, burst, now (ms).
-- The user's entries not yet migrated above that pos (the score is an
-- entry's seq: its pos), or false when its H budget is spent (a rate of 0:
-- no budget).
if not take_tokens(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), 1) then return false end
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
