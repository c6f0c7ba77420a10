-- include: store_entry note_push fanout note_conversation
-- KEYS: order:<order>, links:<pair>, orders:ending, MQ, MQ:seq,
--       pending:<courier>, pending:<customer>,
--       dedup:0:<courier>:closed-<order>, dedup:0:<customer>:closed-<order>, open:<courier>,
--       dev:<courier>, dev:<customer>, conv:<courier>, convlast:<courier>,
--       unread:<courier>:0, conv:<customer>, convlast:<customer>, unread:<customer>:0
--       [, push:unread, push:last, push:due: only with [push] url set]
-- ARGV: order, courier, customer, now (ms), grace (ms), s packet to the
--       courier, s packet to the customer, dedup ttl, channel prefix ('':
--       publish nothing, the caller delivers) [, push due (ms)]
-- Each s packet stored is published with its pos to the nodes of its
-- recipient's connections (the fanout snippet) and is the last of its
-- conversation with 0, unread (note_conversation).
-- {1, closed_at, ends_at, courier's stored, customer's stored}: closed now;
-- {0, closed_at, ends_at}: closed before; {-1}: the record is not a take by
-- that courier (gone meanwhile).
local record = redis.call('HMGET', KEYS[1], 'courier', 'taken_at', 'closed_at', 'ends_at')
if record[1] ~= ARGV[2] or not record[2] then return {-1} end
if record[3] then return {0, tonumber(record[3]), tonumber(record[4])} end
local ends = tonumber(ARGV[4]) + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'closed_at', ARGV[4], 'ends_at', ends)
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], 'inf', ARGV[1])
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[3], ends, ARGV[1])
-- no longer open: the courier's next position does not go to the customer
redis.call('ZREM', KEYS[10], ARGV[1] .. ':' .. ARGV[3])
local stored = {0, 0}
for i, to in ipairs({ARGV[2], ARGV[3]}) do
  if redis.call('SET', KEYS[7 + i], to, 'NX', 'EX', ARGV[8]) then
    -- (its seq: the packet's pos, 0 when not stored now)
    stored[i] = store_entry(KEYS[4], KEYS[5], KEYS[5 + i], KEYS[5 + i], ARGV[5 + i])
    if ARGV[10] then note_push(KEYS[19], KEYS[20], KEYS[21], to, ARGV[5 + i], ARGV[10]) end
    local delivered = string.sub(ARGV[5 + i], 1, -2) .. ',"pos":' .. stored[i] .. '}'
    local c = 10 + 3 * i
    note_conversation(KEYS[c], KEYS[c + 1], '0', stored[i], delivered, KEYS[c + 2], KEYS[7 + i])
    if ARGV[9] ~= '' then fanout(ARGV[9], KEYS[10 + i], to, false, '0', '', delivered) end
  end
end
return {1, tonumber(ARGV[4]), ends, stored[1], stored[2]}
