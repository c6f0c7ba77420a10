-- KEYS: dev:<uid>, nodeusers:<node>; ARGV: member, own node, uid
redis.call('ZREM', KEYS[1], ARGV[1])
local mine = ARGV[2] .. ' '
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #mine) == mine then return 0 end
end
redis.call('SREM', KEYS[2], ARGV[3])
return 1
