-- include: frame node_of
-- fanout(prefix, dev:<to>, to, dev:<from>, from, skip, packet[, pos]): a
-- stored packet (with its pos) published from inside the script that stored
-- it, one frame per node and message at most where it can: to every node
-- holding a connection of its recipient ('d' frame) and of its sender
-- (skip: the dev:<uid> member '<node> <conn id>' of the connection it came
-- on, which gets only the A, or ''), this node included.  The sending
-- connection's node gets one 'x' frame naming that connection and the pos
-- (pos: the packet's; nil reads it from the packet's end), which carries
-- the packet and the recipient's uid only when a connection there gets it
-- (the recipient's, the sender's other ones; imd.busframes); the other
-- nodes a 'd' frame per party.  Redis runs scripts one at a time and a
-- subscriber gets a channel's messages in the order published, so every
-- connection gets its live packets in pos order (contract §10).
-- dev_from false: the sender's connections get nothing (system messages).
local function fanout(prefix, dev_to, to, dev_from, from, skip, packet, pos)
  local skip_node = dev_from and skip ~= '' and node_of(skip)
  local here_to = false   -- the recipient has a connection on skip_node
  if to ~= from then
    local seen = {}
    for _, m in ipairs(redis.call('ZRANGE', dev_to, 0, -1)) do
      local node = node_of(m)
      if not seen[node] then
        seen[node] = true
        if node == skip_node then
          here_to = true
        else
          redis.call('PUBLISH', prefix .. node, frame('d', to, packet))
        end
      end
    end
  end
  if not dev_from then return end
  -- skip_there: the sender has a connection on skip_node (the one the
  -- packet came on or another); others: one but that one
  local seen, skip_there, others = {}, false, false
  for _, m in ipairs(redis.call('ZRANGE', dev_from, 0, -1)) do
    local node = node_of(m)
    if node == skip_node then
      skip_there = true
      if m ~= skip then others = true end
    elseif not seen[node] then
      seen[node] = true
      redis.call('PUBLISH', prefix .. node, frame('d', from, packet))
    end
  end
  if skip_there then
    -- (the sending connection's node always gets its 'x' frame, even with
    -- no other connection there: its arrival is what lets the A go, so an A
    -- never runs ahead of the deliveries of that node)
    local head = string.sub(skip, #skip_node + 2) .. ' ' .. (pos or string.match(packet, ',"pos":(%d+)}$'))
    if here_to or others then
      head = head .. ' ' .. (here_to and to or '0') .. ' ' .. packet
    end
    redis.call('PUBLISH', prefix .. skip_node, frame('x', from, head))
  elseif here_to then
    redis.call('PUBLISH', prefix .. skip_node, frame('d', to, packet))
  end
end
