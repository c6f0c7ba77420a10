-- KEYS: processes, processes:info.  The info JSON of every live entry.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then out[#out + 1] = info end
end
return out
