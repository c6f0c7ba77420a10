-- KEYS: MQ:seq.  ARGV: a floor (the highest accept_seq in MySQL).
-- Raises the accept order to at least the floor, never lowers it: a Redis
-- restored from an older snapshot hands no position out twice.  Returns
-- the value now.
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if now < floor then
  redis.call('SET', KEYS[1], ARGV[1])
  return floor
end
return now
