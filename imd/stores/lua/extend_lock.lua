-- KEYS: lock.  ARGV: token, ttl ms.  Extends the caller's own lock only:
-- a leader whose lock lapsed must not take a free lock back from its renew
-- timer, mid-step -- an ack of its old term would then carry a valid token
-- and trim the batch another leader claimed since (and has not committed).
-- Only a step's start takes a free lock (HOLD_LOCK), once the acks of the
-- step before have settled.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
