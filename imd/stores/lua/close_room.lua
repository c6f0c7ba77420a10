-- include: store_room_entry room_fanout members_stale
-- KEYS: room:<room>, roommembers:<room>, MQ, MQ:seq, roompending:<room>,
--       then for each member named in ARGV dev:<member>, roomconv:<member>
-- ARGV: now (Unix ms), grace (ms), the room's id, channel prefix ('':
--       publish nothing), then the members as the caller knows them
-- Returns 0 (no such room), {'stale', member...} (the members named are
-- not the room's: nothing changed, call again with these) or {ends_at,
-- entry or '', members (comma-separated)}.  The first close stores the
-- "closed" event (it takes a seq), publishes it to the members' nodes
-- (room_fanout) and notes it in their conversation lists, and sets
-- closed_at and ends_at = closed_at + grace; a later one changes nothing
-- and answers the same ends_at.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ends = redis.call('HGET', KEYS[1], 'ends_at')
local members = table.concat(redis.call('SMEMBERS', KEYS[2]), ',')
if ends then return {tonumber(ends), '', members} end
local n = #ARGV - 4
local stale = members_stale(KEYS[2], 5, n)
if stale then return stale end
local now = tonumber(ARGV[1])
ends = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'closed_at', now, 'ends_at', ends)
local name = cjson.encode(ARGV[3])
local _, pos, entry = store_room_entry(KEYS[1], KEYS[3], KEYS[4], KEYS[5], function(seq)
  return '{"id":"closed-' .. seq .. '","from":0,"room":' .. name .. ',"type":"s","msg":{"room":' .. name ..
    ',"event":"closed"},"ts":' .. now
end)
local uids, devs, convs = {}, {}, {}
for i = 1, n do uids[i], devs[i], convs[i] = ARGV[4 + i], KEYS[4 + 2 * i], KEYS[5 + 2 * i] end
room_note(KEYS[1], ARGV[3], pos, entry, convs)
room_fanout(ARGV[4], '', '0', entry, uids, devs)
return {ends, entry, members}
