-- expire_links(key): a link set's expiry follows its longest link: none
-- while a closed order's link (score inf) is in it, gone with it once empty.
local function expire_links(key)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #top == 0 then return end
  if top[2] == 'inf' then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, string.format('%d', tonumber(top[2])))
  end
end
