-- include: store_entry note_push fanout note_conversation
-- KEYS: URS:<from>, dedup:<from>:<id>, MQ, MQ:seq, pending:<from>, pending:<to>,
--       dev:<to>, dev:<from>, conv:<from>, convlast:<from>, conv:<to>,
--       convlast:<to>, unread:<to>:<from>
--       [, push:unread, push:last, push:due: only with [push] url set]
-- ARGV: to, packet, dedup ttl, from, channel prefix ('' : publish nothing,
--       the caller delivers), the sending connection's dev:<from> member
--       [, when the push is due (ms)]
-- Returns 0 (not a friend), {1, seq} (stored: seq is its pos) or {2, seq}
-- (a duplicate: the first store's seq, 0 when its record does not say).
-- Stored, it is the last of both parties' conversation (note_conversation)
-- and one of the recipient's unread; the packet with its pos is published to the nodes of both
-- parties' connections (the fanout snippet) but the sending connection's.
-- The dedup record's value is '<to>/<seq>' (receipts append ':d' or ':r').
-- A duplicate renews its dedup record: that write is what a WAIT after it
-- counts ([redis] min_replicas), so the retry is acked only once the
-- replicas are past the first store, even on a connection that never made it.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
local first = redis.call('GET', KEYS[2])
if first then
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return {2, tonumber(string.match(first, '^%d+/(%d+)')) or 0}
end
local seq = store_entry(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1] .. '/' .. seq, 'EX', ARGV[3])
if ARGV[7] then note_push(KEYS[14], KEYS[15], KEYS[16], ARGV[1], ARGV[2], ARGV[7]) end
local delivered = string.sub(ARGV[2], 1, -2) .. ',"pos":' .. seq .. '}'
-- both parties' conversation lists (contract §10)
note_conversation(KEYS[9], KEYS[10], ARGV[1], seq, delivered, false)
if ARGV[1] ~= ARGV[4] then note_conversation(KEYS[11], KEYS[12], ARGV[4], seq, delivered, KEYS[13], KEYS[2]) end
if ARGV[5] ~= '' then fanout(ARGV[5], KEYS[7], ARGV[1], KEYS[8], ARGV[4], ARGV[6], delivered, seq) end
return {1, seq}
