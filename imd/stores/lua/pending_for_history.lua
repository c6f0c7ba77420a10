-- include: take_tokens
-- KEYS: pending:<uid>, budget:history:<uid>.  ARGV: rate, burst, now (ms).
-- The user's entries not yet migrated, or false when its H budget is spent.
if not take_tokens(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 1) then return false end
return redis.call('ZRANGE', KEYS[1], 0, -1)
