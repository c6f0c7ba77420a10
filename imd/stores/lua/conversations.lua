-- include: take_tokens
-- KEYS: conv:<uid>, budget:history:<uid>.  ARGV: rate, burst, now (ms),
-- the highest score wanted ('+inf', or '(<pos>' for below it), how many.
-- The user's conversations newest first (contract §10): flat {member, score,
-- ...}, or false when its H budget is spent (a rate of 0: no budget).
if not take_tokens(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 1) then return false end
return redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[4], '-inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
