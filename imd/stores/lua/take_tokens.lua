-- take_tokens(key, rate per s, burst, now ms, cost) -> true when the cost
-- was taken.  A rate of 0 takes nothing and is always true (no limit).
local function take_tokens(key, rate, burst, now, cost)
  if rate <= 0 then return true end
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if not tokens or not at then tokens, at = burst, now end
  if now > at then
    tokens = math.min(burst, tokens + (now - at) * rate / 1000)
    at = now
  end
  if tokens < cost then return false end
  tokens = tokens - cost
  redis.call('HSET', key, 't', string.format('%.4f', tokens), 'at', string.format('%d', at))
  redis.call('PEXPIRE', key, string.format('%d', math.ceil((burst - tokens) * 1000 / rate) + 1000))
  return true
end
