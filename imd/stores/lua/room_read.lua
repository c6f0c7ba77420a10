-- include: cancel_push
-- KEYS: room:<room>, roommembers:<room>, roomread:<room>, MQ,
--       roommine:<room>:<reader>
--       [, push:unread, push:last, push:due: only with [push] url set]
-- ARGV: reader uid, seq, the cursor's MQ entry (the relayed R with "ts").
-- A cursor that moves by n counts n of the reader's undelivered messages
-- as seen (a read implies delivered): the pending push ends with the last.
-- The reader's own messages at or below the cursor leave roommine (the
-- conversation list counts those above it: they are not unread).
-- Returns 0 (no such room), -1 (not a member), -2 (past the room's last
-- seq), 1 (not moved: an older or equal seq) or {2, member...} (moved:
-- stored, and the entry queued for MySQL).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return -1 end
local seq = tonumber(ARGV[2])
if seq > tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') then return -2 end
local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if seq <= old then return 1 end
redis.call('HSET', KEYS[3], ARGV[1], seq)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', seq)
if KEYS[6] then cancel_push(KEYS[6], KEYS[7], KEYS[8], ARGV[1], seq - old) end
redis.call('LPUSH', KEYS[4], ARGV[3])
local out = {2}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do out[#out + 1] = tonumber(m) end
return out
