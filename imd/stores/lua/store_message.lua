-- include: store_entry note_push
-- KEYS: URS:<from>, dedup:<from>:<id>, MQ, MQ:seq, pending:<from>, pending:<to>
--       [, push:unread, push:last, push:due: only with [push] url set]
-- ARGV: to, packet, dedup ttl [, when the push is due (ms)]
-- Returns 0 (not a friend), {1, seq} (stored: seq is its pos) or {2, seq}
-- (a duplicate: the first store's seq, 0 when its record does not say).
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
if ARGV[4] then note_push(KEYS[7], KEYS[8], KEYS[9], ARGV[1], ARGV[2], ARGV[4]) end
return {1, seq}
