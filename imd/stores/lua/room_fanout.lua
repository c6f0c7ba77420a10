-- include: frame node_of
-- room_note(room:<room>, room, pos, entry, convs): entry (a stored room
-- packet, with its seq and pos) is the room's latest ("last" of its hash),
-- and each roomconv:<uid> of convs (its recipients') has the room at pos:
-- the rooms' side of the conversation list (contract §10), written in the
-- script that stores the packet, so a list never scans history.
local function room_note(room_key, room, pos, entry, convs)
  redis.call('HSET', room_key, 'last', entry)
  for _, key in ipairs(convs) do redis.call('ZADD', key, pos, room) end
end

-- room_fanout(prefix, skip, sender, packet, uids, devs): a stored room
-- packet published from inside the script that stored it, as fanout.lua
-- does for one-to-one messages: one 'g' frame (imd.busframes) to every node
-- holding a connection of any of uids (devs[i] is dev:<uids[i]>), naming the
-- uids it holds, this node included.  skip: the dev:<sender> member
-- '<node> <conn id>' of the connection the packet came on ('' for none):
-- that node always gets a frame (its arrival lets the A go, so an A never
-- runs ahead of that node's deliveries), naming the sender first and the
-- connection to leave out after a '/'.  prefix '': publishes nothing (the
-- caller delivers: [redis] min_replicas).  Redis runs scripts one at a
-- time and a channel keeps the order published: every connection gets
-- room packets and one-to-one ones in pos order.
local function room_fanout(prefix, skip, sender, packet, uids, devs)
  if prefix == '' then return 0 end
  local by_node, order = {}, {}
  local skip_node = false
  if skip ~= '' then
    skip_node = node_of(skip)
    by_node[skip_node] = {sender}
    order[1] = skip_node
  end
  for i, uid in ipairs(uids) do
    local seen = {}
    for _, m in ipairs(redis.call('ZRANGE', devs[i], 0, -1)) do
      local node = node_of(m)
      if not seen[node] then
        seen[node] = true
        local list = by_node[node]
        if not list then list = {}; by_node[node] = list; order[#order + 1] = node end
        if not (node == skip_node and uid == sender) then list[#list + 1] = uid end
      end
    end
  end
  for _, node in ipairs(order) do
    local list = by_node[node]
    local named = table.concat(list, ',')
    if node == skip_node then named = named .. '/' .. string.sub(skip, #node + 2) end
    redis.call('PUBLISH', prefix .. node, frame('g', list[1], named .. ' ' .. packet))
  end
  return #order
end
