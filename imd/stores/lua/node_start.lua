-- KEYS: nodeusers:<node>, nodes, then dev:<uid> of each uid in ARGV[4..]
-- ARGV: own node, this run's conn-id prefix, heartbeat ms, then the uids
-- Drops the connections an earlier run of this node left behind (they have
-- another conn-id prefix), then beats.
local mine = ARGV[1] .. ' '
local current = mine .. ARGV[2]
for i = 3, #KEYS do
  local left = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    if string.sub(m, 1, #mine) == mine then
      if string.sub(m, 1, #current) == current then
        left = left + 1
      else
        redis.call('ZREM', KEYS[i], m)
      end
    end
  end
  if left == 0 then redis.call('SREM', KEYS[1], ARGV[i + 1]) end
end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
return 1
