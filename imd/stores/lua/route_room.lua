-- include: frame node_of
-- KEYS: dev:<uid> of each recipient.  ARGV: own node, channel prefix,
-- packet, then the recipients' uids (one per key).  Publishes the packet
-- once to every other node holding a connection of any of them, naming
-- the recipients it holds: one PUBLISH per node, not per member.
local by_node, order = {}, {}
for i = 1, #KEYS do
  for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    local node = node_of(m)
    if node ~= ARGV[1] then
      local list = by_node[node]
      if not list then list = {}; by_node[node] = list; order[#order + 1] = node end
      if list[#list] ~= ARGV[i + 3] then list[#list + 1] = ARGV[i + 3] end
    end
  end
end
for _, node in ipairs(order) do
  local list = by_node[node]
  redis.call('PUBLISH', ARGV[2] .. node, frame('g', list[1], table.concat(list, ',') .. ' ' .. ARGV[3]))
end
return #order
