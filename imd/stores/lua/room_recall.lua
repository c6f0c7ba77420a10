-- include: cancel_push room_fanout members_stale frame node_of
-- Recall (D) or moderation delete of one room message (contract v3 §11), in
-- one go: find it among the room's entries not yet migrated (by the pos its
-- dedup record names), check it, take its text out of Redis (the entry
-- rewritten in its place: the same score of roompending:<room>, the same
-- position of MQ or MQ:processing, so the migrator's positions hold), store
-- the D (an entry of the message log with a pos and no room seq: a D is not
-- a room message), cancel a push not yet sent for it and publish the D to
-- every node holding a member's connection (room_fanout, as store_room.lua
-- does: in pos order with every other stored packet, contract §10).
-- KEYS: rdedup:<from>:<room>/<recalled id>, roompending:<room>, MQ,
--       MQ:processing, MQ:seq, room:<room>, roommembers:<room>,
--       rdedup:<from>:<room>/<D id>, rrecalled:<from>:<room>/<recalled id>,
--       roomread:<room>, push:unread, push:last, push:due, then for each
--       member named in ARGV (in that order) dev:<member>, roomsync:<member>
-- ARGV: the D packet without its closing brace, dedup ttl, the message's
--       head as it starts its entry ('{"id":<id>,"from":F,"room":R,"type":"';
--       ARGV[4] the same with the id as a JSON number, or ''), the recalled
--       mark's ttl, now (ms), window (ms, -1: none), force ('1': MySQL has
--       it, unrecalled and in the window), the sender's uid, push ('1':
--       [push] url set; '': the push keys are left alone), channel prefix
--       ('': publish nothing, the caller delivers), the sending
--       connection's dev:<from> member ('': none), the room's id, then the
--       members as the caller knows them
-- Returns {1, pos} stored (published to the members named, the room's,
-- and the room at pos in each one's roomsync:, where a sync finds it: the D
-- does not move the room in the conversation list, roomconv:); {2, pos} a retry of this D; {3} already recalled; {4} outside
-- the window; {5} no such room; {'stale', member...} (the members named are
-- not the room's: nothing stored, call again with these); {0} not in Redis
-- (the caller asks MySQL, which has it if it exists: an entry leaves
-- roompending only after its commit).
if redis.call('EXISTS', KEYS[6]) == 0 then return {5} end
if redis.call('EXISTS', KEYS[9]) == 1 then return {3} end
local heads = {ARGV[3], ARGV[4]}
local found, found_pos
if ARGV[8] ~= '1' then
  local record = redis.call('GET', KEYS[1])
  local at = record and string.match(record, '^%d+/(%d+)')
  local items
  local window = tonumber(ARGV[7])
  if at then
    items = redis.call('ZRANGEBYSCORE', KEYS[2], at, at, 'WITHSCORES')
  elseif window >= 0 and window <= tonumber(ARGV[2]) * 1000 then
    -- (a client's D: a message in the window has its record, dedup_ttl >=
    -- the window; without one it is older or was never sent, and reading
    -- the room's whole backlog for a made-up id is what a hostile member
    -- would ask for: MySQL answers, by its key)
    return {0}
  else
    -- (no record: expired after [redis] dedup_ttl, a delete of an old
    -- message still unmigrated) the room's entries are looked through
    items = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  end
  for i = 1, #items, 2 do
    for _, head in ipairs(heads) do
      if head ~= '' and string.sub(items[i], 1, #head) == head then found, found_pos = items[i], items[i + 1] end
    end
    if found then break end
  end
  if not found then return {0} end
  if string.find(found, ',"msg":"","recalled":true,"ts":', 1, true) then return {3} end
  local ts = tonumber(string.match(found, ',"ts":(%d+),"seq":%d+,"pos":%d+}$'))
  if window >= 0 and ts and tonumber(ARGV[6]) - ts > window then return {4} end
end
local first = redis.call('GET', KEYS[8])
if first then
  redis.call('EXPIRE', KEYS[8], ARGV[2])
  return {2, tonumber(first)}
end
local n = #ARGV - 13
local stale = members_stale(KEYS[7], 14, n)
if stale then return stale end
local seq
if found then
  local h, t = string.match(found, '^({"id":.-,"type":"[^"]","msg":).*(,"ts":%d+,"seq":(%d+),"pos":%d+})$')
  if h then
    seq = tonumber(string.match(t, ',"seq":(%d+)'))
    local new = h .. '"","recalled":true' .. t
    if redis.call('ZREM', KEYS[2], found) == 1 then redis.call('ZADD', KEYS[2], found_pos, new) end
    for _, list in ipairs({KEYS[3], KEYS[4]}) do
      local at = redis.call('LPOS', list, found)
      if at then redis.call('LSET', list, at, new) end
    end
  end
end
local pos = redis.call('INCR', KEYS[5])
local entry = ARGV[1] .. ',"pos":' .. pos .. '}'
redis.call('LPUSH', KEYS[3], entry)
redis.call('ZADD', KEYS[2], pos, entry)
redis.call('SET', KEYS[8], pos, 'EX', ARGV[2])
-- until the D is migrated (room_message's tombstone then says it), this says it
redis.call('SET', KEYS[9], '1', 'EX', ARGV[5])
-- the room's last packet (the conversation list's "last", imd.stores.
-- room_conversations) loses the text too when it is this message
local last = redis.call('HGET', KEYS[6], 'last')
if last then
  for _, head in ipairs(heads) do
    if head ~= '' and string.sub(last, 1, #head) == head then
      local h, t = string.match(last, '^({"id":.-,"type":"[^"]","msg":).*(,"ts":%d+,"seq":%d+,"pos":%d+})$')
      if h then redis.call('HSET', KEYS[6], 'last', h .. '"","recalled":true' .. t) end
    end
  end
end
local members, devs, sender_member = {}, {}, false
for i = 1, n do
  members[i], devs[i] = ARGV[13 + i], KEYS[12 + 2 * i]
  if members[i] == ARGV[9] then sender_member = true end
  -- (a sync finds the rooms with packets above its pos by roomconv: and
  -- roomsync:; roomconv: orders the conversation list, which a recall
  -- does not change)
  redis.call('ZADD', KEYS[13 + 2 * i], pos, ARGV[13])
end
if ARGV[10] == '1' then
  -- a push not yet sent for it is not sent: for each member who has not
  -- read that far, it no longer counts as undelivered; a push that would
  -- name it names it without its text
  for _, m in ipairs(members) do
    if m ~= ARGV[9] then
      if seq and tonumber(redis.call('HGET', KEYS[10], m) or '0') < seq and redis.call('HEXISTS', KEYS[11], m) == 1 then
        cancel_push(KEYS[11], KEYS[12], KEYS[13], m, 1)
      end
      local last = redis.call('HGET', KEYS[12], m)
      if last then
        for _, head in ipairs(heads) do
          if head ~= '' and string.sub(last, 1, #head) == head then
            local h, t = string.match(last, '^({"id":.-,"type":"[^"]","msg":).*(,"ts":%d+,"seq":%d+,"pos":%d+})$')
            if h then redis.call('HSET', KEYS[12], m, h .. '"","recalled":true' .. t) end
          end
        end
      end
    end
  end
end
if ARGV[12] == '' or sender_member then
  room_fanout(ARGV[11], ARGV[12], ARGV[9], entry, members, devs)
else
  -- a sender removed from the room: the D goes to the members only, and
  -- the sending connection's node gets an 'x' frame without the packet
  -- after theirs (imd.busframes): what lets its A go
  room_fanout(ARGV[11], '', '0', entry, members, devs)
  if ARGV[11] ~= '' then
    local node = node_of(ARGV[12])
    redis.call('PUBLISH', ARGV[11] .. node, frame('x', ARGV[9], string.sub(ARGV[12], #node + 2) .. ' ' .. pos))
  end
end
return {1, pos}
