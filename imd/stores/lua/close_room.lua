-- include: store_room_entry
-- KEYS: room:<room>, roommembers:<room>, MQ, MQ:seq, roompending:<room>
-- ARGV: now (Unix ms), grace (ms), the room's id
-- Returns 0 (no such room) or {ends_at, entry or '', members
-- (comma-separated)}.  The first close stores the "closed" event (it
-- takes a seq) and sets closed_at and ends_at = closed_at + grace; a
-- later one changes nothing and answers the same ends_at.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ends = redis.call('HGET', KEYS[1], 'ends_at')
local members = table.concat(redis.call('SMEMBERS', KEYS[2]), ',')
if ends then return {tonumber(ends), '', members} end
local now = tonumber(ARGV[1])
ends = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'closed_at', now, 'ends_at', ends)
local name = cjson.encode(ARGV[3])
local _, _, entry = store_room_entry(KEYS[1], KEYS[3], KEYS[4], KEYS[5], function(seq)
  return '{"id":"closed-' .. seq .. '","from":0,"room":' .. name .. ',"type":"s","msg":{"room":' .. name ..
    ',"event":"closed"},"ts":' .. now
end)
return {ends, entry, members}
