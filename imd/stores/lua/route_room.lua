-- include: frame node_of
-- KEYS: dev:<uid> of each recipient (each once).  ARGV: own node, channel
-- prefix, the recipients' uids (one per key), then for each packet: the
-- packet, how many of the recipients it goes to, and their key numbers.
-- Publishes each packet once to every other node holding a connection of
-- any of its recipients, naming those it holds: one PUBLISH per node and
-- packet, not per member; all of a reactor turn's room packets in one call.
-- (What carries no pos: read cursors and typing.  Stored room packets are
-- published by the scripts that store them, room_fanout.lua, except with
-- [redis] min_replicas, when the node delivers them once replicated.)
local own, prefix, n = ARGV[1], ARGV[2], #KEYS
local nodes_of = {}
for i = 1, n do
  local nodes, seen = {}, {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    local node = node_of(m)
    if node ~= own and not seen[node] then seen[node] = true; nodes[#nodes + 1] = node end
  end
  nodes_of[i] = nodes
end
local a, published = 3 + n, 0
while a <= #ARGV do
  local packet, count = ARGV[a], tonumber(ARGV[a + 1])
  local by_node, order = {}, {}
  for j = a + 2, a + 1 + count do
    local i = tonumber(ARGV[j])
    for _, node in ipairs(nodes_of[i]) do
      local list = by_node[node]
      if not list then list = {}; by_node[node] = list; order[#order + 1] = node end
      list[#list + 1] = ARGV[2 + i]
    end
  end
  for _, node in ipairs(order) do
    local list = by_node[node]
    redis.call('PUBLISH', prefix .. node, frame('g', list[1], table.concat(list, ',') .. ' ' .. packet))
    published = published + 1
  end
  a = a + 2 + count
end
return published
