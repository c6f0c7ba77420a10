-- include: store_entry note_push fanout note_conversation
-- KEYS: MQ, MQ:seq [, push:unread, push:last, push:due: only with [push] url
--       set], then per recipient: dedup:0:<to>:<id>, pending:<to>, dev:<to>,
--       conv:<to>, convlast:<to>, unread:<to>:0
-- ARGV: dedup ttl, packet head, packet tail, when the pushes are due (ms; ''
--       without [push] url), channel prefix ('': publish nothing, the caller
--       delivers), then the recipients' uids.
-- A system message (from 0) to each recipient that has not had this id yet:
-- head .. uid .. tail is its packet, published with its pos to the nodes of
-- the recipient's connections (the fanout snippet), the last of its
-- conversation with 0 and one of its unread there (note_conversation).  Returns, for each
-- stored, its 1-based index and its seq (its pos), flat: {i, seq, i, seq, ...}.
local push = ARGV[4] ~= ''
local first = push and 6 or 3
local stored = {}
for i = 6, #ARGV do
  local to = ARGV[i]
  local j = 6 * (i - 6) + first
  if redis.call('SET', KEYS[j], to, 'NX', 'EX', ARGV[1]) then
    local packet = ARGV[2] .. to .. ARGV[3]
    local seq = store_entry(KEYS[1], KEYS[2], KEYS[j + 1], KEYS[j + 1], packet)
    if push then note_push(KEYS[3], KEYS[4], KEYS[5], to, packet, ARGV[4]) end
    local delivered = string.sub(packet, 1, -2) .. ',"pos":' .. seq .. '}'
    note_conversation(KEYS[j + 3], KEYS[j + 4], '0', seq, delivered, KEYS[j + 5], KEYS[j])
    if ARGV[5] ~= '' then fanout(ARGV[5], KEYS[j + 2], to, false, '0', '', delivered) end
    stored[#stored + 1] = i - 5
    stored[#stored + 1] = seq
  end
end
return stored
