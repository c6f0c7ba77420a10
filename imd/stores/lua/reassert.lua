-- KEYS: nodeusers:<node>, then dev:<uid> of each connection
-- ARGV: own node, then (uid, conn id, score) per dev key
-- Re-registers this node's live connections (after Redis lost them).
for i = 2, #KEYS do
  local j = 3 * (i - 2) + 2
  redis.call('ZADD', KEYS[i], ARGV[j + 2], ARGV[1] .. ' ' .. ARGV[j + 1])
  redis.call('SADD', KEYS[1], ARGV[j])
end
return 1
