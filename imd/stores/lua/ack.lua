-- KEYS: lock, processing, dead, then pending:<uid> of every party of the batch.
-- ARGV: token, size of the batch, number of dead entries, the dead entries,
-- then for each pending key the highest accept order of the batch for that user.
-- Called only after the batch's COMMIT, and after the ack of every batch
-- claimed before it: the batch is then the oldest in MQ:processing, its
-- tail, which goes.  A user's entries are claimed in accept order and
-- batches commit in the order claimed, so everything of theirs up to that
-- seq is in MySQL now.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local size = tonumber(ARGV[2])
local dead = tonumber(ARGV[3])
for i = 4, 3 + dead do redis.call('LPUSH', KEYS[3], ARGV[i]) end
for i = 4, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[dead + i])
end
redis.call('LTRIM', KEYS[2], 0, -size - 1)
return 1
