-- include: store_entry tombstone_entry cancel_push fanout
-- Recall (D) or moderation delete of one message (contract v3 §11), in one
-- go: find it among the sender's entries not yet migrated (by the seq its
-- dedup record names), check it, take
-- its text out of Redis, store the D (an entry of the message log: its seq
-- is the D's pos) and cancel a push not yet sent for it.
-- KEYS: dedup:<from>:<D id>, MQ, MQ:seq, pending:<from>, pending:<to>,
--       MQ:processing, dedup:<from>:<recalled id>, recalled:<from>:<recalled id>,
--       dev:<to>, dev:<from>, unread:<to>:<from>, convlast:<to>, convlast:<from>
--       [, push:unread, push:last, push:due: only with [push] url set]
-- ARGV: to, D packet, dedup ttl, the message's head as it starts its entry
--       ('{"id":<id>,"from":F,"to":T,"type":"'; ARGV[5] the same with the
--       id as a JSON number, or ''), the recalled mark's ttl, now (ms),
--       window (ms, -1: none), force ('1': MySQL has it, unrecalled and in
--       the window: no need to look in Redis), push ('1' with [push] url),
--       from, channel prefix ('': publish nothing, the caller delivers),
--       '1': the D goes to the sender's connections too, but the dev:<from>
--       member in ARGV[14] ('' none; the fanout snippet)
-- Returns {1, seq} stored; {2} a retry of this D; {3} already recalled;
-- {4} outside the window; {0} not in Redis (the caller asks MySQL, which
-- has it if it exists: an entry leaves pending only after its commit).
-- (With force, a copy of the entry still in pending because its batch has
-- committed but not been acked yet keeps its text until that ack trims it,
-- a moment later; the merge shows the row, tombstoned.)
local to, heads = ARGV[1], {ARGV[4], ARGV[5]}
if redis.call('EXISTS', KEYS[8]) == 1 then return {3} end
local found, found_seq
if ARGV[9] ~= '1' then
  -- The message's dedup record ('<to>/<seq>...') names its seq, so the one
  -- entry is read by score: a recall costs the same however many of the
  -- sender's entries wait for the migrator.  Only without a record that
  -- says it (expired after [redis] dedup_ttl: a moderation delete of an
  -- old message still unmigrated) are the sender's entries looked through.
  local record = redis.call('GET', KEYS[7])
  local at = record and string.match(record, '^%d+/(%d+)')
  local items
  if at and at ~= '0' then
    items = redis.call('ZRANGEBYSCORE', KEYS[4], at, at, 'WITHSCORES')
  else
    items = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
  end
  for i = 1, #items, 2 do
    local entry = items[i]
    for _, head in ipairs(heads) do
      if head ~= '' and string.sub(entry, 1, #head) == head then found, found_seq = entry, items[i + 1] end
    end
    if found then break end
  end
  if not found then return {0} end
  if string.find(found, ',"msg":"","recalled":true,"ts":', 1, true) then return {3} end
  local ts = tonumber(string.match(found, ',"ts":(%d+),"seq":%d+}$'))
  local window = tonumber(ARGV[8])
  if window >= 0 and ts and tonumber(ARGV[7]) - ts > window then return {4} end
end
if not redis.call('SET', KEYS[1], to, 'NX', 'EX', ARGV[3]) then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {2}
end
if found then tombstone_entry(KEYS[2], KEYS[6], KEYS[4], KEYS[5], found, found_seq) end
local seq = store_entry(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2])
-- until the D is migrated (MySQL's recalled column then says it), this says it
redis.call('SET', KEYS[8], to, 'EX', ARGV[6])
if ARGV[10] == '1' then
  -- a push not yet sent for it is not sent: it no longer counts as
  -- undelivered, and if it was the newest the push would name, the push
  -- (for the others still undelivered) names it without its text
  local state = redis.call('GET', KEYS[7])
  if state and not string.find(state, ':', 1, true) then cancel_push(KEYS[14], KEYS[15], KEYS[16], to, 1) end
  local last = redis.call('HGET', KEYS[15], to)
  if last then
    for _, head in ipairs(heads) do
      if head ~= '' and string.sub(last, 1, #head) == head then
        local h, t = string.match(last, '^({"id":.-,"type":"[^"]","msg":).*(,"ts":%d+})$')
        if h then redis.call('HSET', KEYS[15], to, h .. '"","recalled":true' .. t) end
      end
    end
  end
end
-- the conversation lists (contract §10): no longer unread; a last packet
-- that is this message shows its tombstone
redis.call('ZREM', KEYS[11], KEYS[7])
for _, side in ipairs({{KEYS[12], ARGV[11]}, {KEYS[13], to}}) do
  local last = redis.call('HGET', side[1], side[2])
  if last then
    for _, head in ipairs(heads) do
      if head ~= '' and string.sub(last, 1, #head) == head then
        local h, t = string.match(last, '^({"id":.-,"type":"[^"]","msg":).*(,"ts":%d+,"pos":%d+})$')
        if h then redis.call('HSET', side[1], side[2], h .. '"","recalled":true' .. t) end
      end
    end
  end
end
if ARGV[12] ~= '' then
  fanout(ARGV[12], KEYS[9], to, ARGV[13] == '1' and KEYS[10], ARGV[11], ARGV[14],
         string.sub(ARGV[2], 1, -2) .. ',"pos":' .. seq .. '}', seq)
end
return {1, seq}
