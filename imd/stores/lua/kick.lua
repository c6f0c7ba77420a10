-- include: frame node_of
-- KEYS: dev:<uid>; ARGV: uid, reason, channel prefix.  How many nodes were told.
local seen, count = {}, 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local node = node_of(m)
  if not seen[node] then
    seen[node] = true
    count = count + 1
    redis.call('PUBLISH', ARGV[3] .. node, frame('k', ARGV[1], ARGV[2]))
  end
end
return count
