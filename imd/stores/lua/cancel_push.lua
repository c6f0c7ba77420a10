-- cancel_push(push:unread, push:last, push:due, to, n): ``n`` messages of
-- ``to`` were reported delivered; none left undelivered: no push waits.
local function cancel_push(unread, last, due, to, n)
  if redis.call('HINCRBY', unread, to, -n) <= 0 then
    redis.call('HDEL', unread, to)
    redis.call('HDEL', last, to)
    redis.call('ZREM', due, to)
  end
end
