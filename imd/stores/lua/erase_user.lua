-- What an erasure (contract v3 §11) removes of a user besides its messages,
-- in one go: its friendships (both directions, order-made ones too), its
-- last position, its pending push.  Repeating it changes nothing.
-- KEYS: URS:<uid>, kept:<uid>, geo:couriers, site:<uid>, push:unread,
--       push:last, push:due.  ARGV: uid, then the URS key of each friend
--       and its kept key, as '<URS key>\n<kept key>', one per friend
--       (the caller read URS:<uid> first; a friend made since is left)
local uid = ARGV[1]
for i = 2, #ARGV do
  local sep = string.find(ARGV[i], '\n', 1, true)
  redis.call('SREM', string.sub(ARGV[i], 1, sep - 1), uid)
  redis.call('SREM', string.sub(ARGV[i], sep + 1), uid)
end
local friends = redis.call('SCARD', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('ZREM', KEYS[3], uid)
redis.call('HDEL', KEYS[5], uid)
redis.call('HDEL', KEYS[6], uid)
redis.call('ZREM', KEYS[7], uid)
return friends
