-- include: frame node_of
-- fanout(prefix, dev:<to>, to, dev:<from>, from, skip, packet): a stored
-- packet (with its pos) published from inside the script that stored it, to
-- every node holding a connection of its recipient ('d' frame) and of its
-- sender (skip: the dev:<uid> member '<node> <conn id>' of the connection
-- it came on, which gets only the A, or '': its node gets an 'x' frame
-- naming that connection, the others a 'd' frame), this node included.  Redis runs scripts one at a
-- time and a subscriber gets a channel's messages in the order published, so
-- every connection gets its live packets in pos order (contract §10).
-- dev_from false: the sender's connections get nothing (system messages).
local function fanout(prefix, dev_to, to, dev_from, from, skip, packet)
  if to ~= from then
    local seen = {}
    for _, m in ipairs(redis.call('ZRANGE', dev_to, 0, -1)) do
      local node = node_of(m)
      if not seen[node] then
        seen[node] = true
        redis.call('PUBLISH', prefix .. node, frame('d', to, packet))
      end
    end
  end
  if not dev_from then return end
  local seen, skip_node = {}, skip ~= '' and node_of(skip)
  for _, m in ipairs(redis.call('ZRANGE', dev_from, 0, -1)) do
    local node = node_of(m)
    -- (the sending connection's node always gets its 'x' frame, even with
    -- no other connection there: its arrival is what lets the A go, so an A
    -- never runs ahead of the deliveries of that node)
    if not seen[node] then
      seen[node] = true
      if node == skip_node then
        redis.call('PUBLISH', prefix .. node, frame('x', from, string.sub(skip, #node + 2) .. ' ' .. packet))
      else
        redis.call('PUBLISH', prefix .. node, frame('d', from, packet))
      end
    end
  end
end
