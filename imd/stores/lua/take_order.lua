-- include: store_entry note_push expire_links restore fanout note_conversation
-- KEYS: URS:<courier>, URS:<customer>, order:<order>, links:<pair>,
--       kept:<courier>, kept:<customer>, MQ, MQ:seq, pending:<courier>, pending:<customer>,
--       dedup:<courier>:taken-<order>, open:<courier>, dev:<customer>,
--       conv:<courier>, convlast:<courier>, conv:<customer>, convlast:<customer>,
--       unread:<customer>:<courier>, assigned:<order>
--       [, push:unread, push:last, push:due: only with [push] url set]
-- ARGV: courier, customer, s packet, open ttl (s), now (ms), order,
--       what MySQL kept of an earlier T ('' when nothing: its courier,
--       taken_at, before), dedup ttl (s), channel prefix ('': publish
--       nothing, the caller delivers), the assigned:<order> token the
--       T read before the order's row ('' when none) [, push due (ms)]
-- The s packet stored is published with its pos to the nodes of the
-- customer's connections (the fanout snippet) and is the last of both
-- parties' conversation, unread for the customer (note_conversation).
-- The s packet gets a dedup record like any message: the customer's
-- receipts for it are verified against that, as for every message.
-- {1, taken_at, before}: first T (friends, the s packet stored);
-- {0, taken_at, before}: a repeat while open (the record and link renewed:
-- nothing else, not even the friendship, which friend rm may have ended);
-- {2}: a repeat after the close (nothing changes: a late retry must not
-- bring an ended friendship back); {3}: the order was closed before any T;
-- {4}: another courier took it; {5}: the order's users changed since the
-- T read its row (assigned:<order> is not the token it read before): nothing
-- happens, the T reads again.  With no record in Redis (it expired) but
-- an earlier T in MySQL, the record is restored and it is a repeat.
-- open while taken and not closed: the courier's positions go to this customer
local function mark_open(now, ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[12], '-inf', now)
  redis.call('ZADD', KEYS[12], now + ttl * 1000, ARGV[6] .. ':' .. ARGV[2])
  expire_links(KEYS[12])
end
if (redis.call('GET', KEYS[19]) or '') ~= ARGV[12] then return {5} end
local record = redis.call('HMGET', KEYS[3], 'courier', 'taken_at', 'closed_at', 'before')
if record[2] then
  if record[1] ~= ARGV[1] then return {4} end
  if record[3] then return {2} end
elseif record[3] then
  return {3}
end
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[4])
if not record[2] and ARGV[7] ~= '' then
  if ARGV[7] ~= ARGV[1] then return {4} end
  restore(KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[9], ARGV[8], ttl, now, ARGV[6])
  mark_open(now, ttl)
  return {0, tonumber(ARGV[8]), ARGV[9]}
end
if record[2] then
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('ZADD', KEYS[4], now + ttl * 1000, ARGV[6])
  expire_links(KEYS[4])
  mark_open(now, ttl)
  return {0, tonumber(record[2]), record[4] or ''}
end
-- friends already, and not through another order still linking them:
-- that friendship is not this order's to end
local before = 'no'
if redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 1 then
  before = 'friends'
elseif redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then
  if redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[5], '+inf') > 0 then
    before = 'order'
  else
    before = 'friends'
    redis.call('SADD', KEYS[5], ARGV[2])
    redis.call('SADD', KEYS[6], ARGV[1])
  end
end
redis.call('HSET', KEYS[3], 'courier', ARGV[1], 'customer', ARGV[2], 'before', before, 'taken_at', ARGV[5])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[4], now + ttl * 1000, ARGV[6])
expire_links(KEYS[4])
local seq = store_entry(KEYS[7], KEYS[8], KEYS[9], KEYS[10], ARGV[3])
redis.call('SET', KEYS[11], ARGV[2], 'NX', 'EX', ARGV[10])
mark_open(now, ttl)
if ARGV[13] then note_push(KEYS[20], KEYS[21], KEYS[22], ARGV[2], ARGV[3], ARGV[13]) end
local delivered = string.sub(ARGV[3], 1, -2) .. ',"pos":' .. seq .. '}'
note_conversation(KEYS[14], KEYS[15], ARGV[2], seq, delivered, false)
note_conversation(KEYS[16], KEYS[17], ARGV[1], seq, delivered, KEYS[18], KEYS[11])
if ARGV[11] ~= '' then fanout(ARGV[11], KEYS[13], ARGV[2], false, ARGV[1], '', delivered) end
return {1, now, before, seq}
