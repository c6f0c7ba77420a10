-- include: expire_links
-- KEYS: orders:ending, order:<order>, links:<pair>, URS:<a>, URS:<b>, kept:<a>
-- ARGV: order, now (ms), a, b, record ttl
-- The one place a friendship made by an order ends: only when the order's
-- end is due and still scheduled (so it runs once, whoever calls it), and
-- only if no other order links the pair and the friendship is not kept.
-- false: not due or already done; else how it ended.
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
local outcome = 'ended'
if redis.call('ZCARD', KEYS[3]) > 0 then
  outcome = 'another order links them'
elseif redis.call('SISMEMBER', KEYS[6], ARGV[4]) == 1 then
  outcome = 'friends before the order'
else
  redis.call('SREM', KEYS[4], ARGV[4])
  redis.call('SREM', KEYS[5], ARGV[3])
end
expire_links(KEYS[3])
redis.call('HSET', KEYS[2], 'ended_at', ARGV[2], 'end', outcome)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return outcome
