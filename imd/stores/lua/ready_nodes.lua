-- KEYS: processes, nodes.  How many live entries run the ws role and whose
-- node's presence heartbeat has not expired (``nodes``, imd.stores.presence):
-- WebSocket nodes that take logins.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local node, roles = string.match(id, '^(.*)/([^/]*)$')
  if node and string.find(',' .. roles .. ',', ',ws,', 1, true)
      and (tonumber(redis.call('ZSCORE', KEYS[2], node) or 0) > now) then
    n = n + 1
  end
end
return n
