-- include: expire_links
-- restore(order key, links key, courier, customer, before, taken_at, open
-- ttl (s), now (ms), order): an open order's record that expired (30 days
-- without a T) made again from what MySQL kept (order_conversation), with
-- its link, and no friendship added: so that its close still ends the
-- friendship its first T made.
local function restore(order_key, links_key, courier, customer, before, taken_at, ttl, now, order)
  redis.call('HSET', order_key, 'courier', courier, 'customer', customer, 'before', before, 'taken_at', taken_at)
  redis.call('EXPIRE', order_key, ttl)
  redis.call('ZADD', links_key, now + ttl * 1000, order)
  expire_links(links_key)
end
