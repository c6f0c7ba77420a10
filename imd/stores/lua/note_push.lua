-- note_push(push:unread, push:last, push:due, to, packet, due ms): one more
-- undelivered message for ``to``.
local function note_push(unread, last, due, to, packet, due_ms)
  redis.call('HINCRBY', unread, to, 1)
  redis.call('HSET', last, to, packet)
  redis.call('ZADD', due, 'NX', due_ms, to)
end
