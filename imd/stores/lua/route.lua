-- include: frame node_of
-- KEYS: dev:<uid> of each packet.  ARGV: own node, channel prefix, then a
-- (uid, packet) pair per key.  Publishes each packet once to every other
-- node holding a connection of its user.
for i = 1, #KEYS do
  local seen = {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    local node = node_of(m)
    if node ~= ARGV[1] and not seen[node] then
      seen[node] = true
      redis.call('PUBLISH', ARGV[2] .. node, frame('d', ARGV[2 * i + 1], ARGV[2 * i + 2]))
    end
  end
end
return 1
