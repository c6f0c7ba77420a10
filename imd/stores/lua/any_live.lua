-- include: node_of
-- any_live(key, nodes): is any connection of dev key ``key`` on a node whose heartbeat lives?
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local function any_live(key, nodes)
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local until_ms = redis.call('ZSCORE', nodes, node_of(m))
    if until_ms and tonumber(until_ms) > now_ms then return true end
  end
  return false
end
