-- include: take_tokens
-- KEYS: roompending:<room>, budget:history:<uid>.  ARGV: rate, burst, now (ms).
-- The room's entries not yet migrated, in accept order, for H {"room"}, or
-- false when the asking user's H budget is spent (a rate of 0: no budget):
-- every form of H spends the one per-user budget.
if not take_tokens(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 1) then return false end
return redis.call('ZRANGE', KEYS[1], 0, -1)
