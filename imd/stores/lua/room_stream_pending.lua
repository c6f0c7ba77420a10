-- KEYS: roomspans:<room>, roompending:<room>, for each room of the user
-- ARGV: uid, after pos
-- Returns per room: the user's spans there ('' when none) and the room's
-- entries not yet migrated above the pos (all of them: the caller keeps
-- those within the spans), in accept order.
local out = {}
for i = 1, #KEYS, 2 do
  local spans = redis.call('HGET', KEYS[i], ARGV[1]) or ''
  out[#out + 1] = spans
  if spans == '' then
    out[#out + 1] = {}
  else
    out[#out + 1] = redis.call('ZRANGEBYSCORE', KEYS[i + 1], '(' .. ARGV[2], '+inf')
  end
end
return out
