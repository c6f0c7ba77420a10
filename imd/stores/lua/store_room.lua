-- include: store_room_entry note_push room_fanout members_stale
-- KEYS: room:<room>, roommembers:<room>, rdedup:<from>:<room>/<id>, MQ,
--       MQ:seq, roompending:<room>, roommine:<room>:<from>, push:unread,
--       push:last, push:due, then for each member named in ARGV (in that
--       order) dev:<member>, roomconv:<member>
-- ARGV: from (0: the server API's system message), head (the packet up to
--       its seq, no closing brace), dedup ttl, now (Unix ms), when the push
--       is due (ms; '': no push), the room's id, channel prefix ('':
--       publish nothing, the caller delivers), the sending connection's
--       dev:<from> member ('': none), then the members as the caller knows
--       them
-- Returns 0 (no such room), -1 (not a member), -2 (closed, past its grace),
-- {2, seq, pos} (a retry: the first store's), {'stale', member...} (the
-- members named are not the room's: nothing stored, call again with
-- these), or {1, seq, pos} (stored: published to every node holding a
-- member's connection (room_fanout), the room's latest for every member's
-- conversation list, one of the sender's own after its read cursor
-- (roommine: own messages are not unread), each other member's push
-- noted).  The membership check is against the stored set, in the same
-- step as the store: a member removed through any node cannot send
-- through another.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local first = redis.call('GET', KEYS[3])
if first then
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  local seq, pos = string.match(first, '^(%d+)/(%d+)')
  return {2, tonumber(seq), tonumber(pos)}
end
if ARGV[1] ~= '0' then
  if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return -1 end
  local ends = redis.call('HGET', KEYS[1], 'ends_at')
  if ends and tonumber(ARGV[4]) >= tonumber(ends) then return -2 end
end
local n = #ARGV - 8
local stale = members_stale(KEYS[2], 9, n)
if stale then return stale end
local seq, pos, entry = store_room_entry(KEYS[1], KEYS[4], KEYS[5], KEYS[6], ARGV[2])
redis.call('SET', KEYS[3], seq .. '/' .. pos, 'EX', ARGV[3])
if ARGV[1] ~= '0' then redis.call('ZADD', KEYS[7], seq, seq) end
local uids, devs, convs = {}, {}, {}
for i = 1, n do
  local m = ARGV[8 + i]
  uids[i], devs[i], convs[i] = m, KEYS[9 + 2 * i], KEYS[10 + 2 * i]
  if ARGV[5] ~= '' and m ~= ARGV[1] then note_push(KEYS[8], KEYS[9], KEYS[10], m, entry, ARGV[5]) end
end
room_note(KEYS[1], ARGV[6], pos, entry, convs)
room_fanout(ARGV[7], ARGV[8], ARGV[1], entry, uids, devs)
return {1, seq, pos}
