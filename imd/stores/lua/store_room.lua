-- include: store_room_entry note_push
-- KEYS: room:<room>, roommembers:<room>, rdedup:<from>:<room>/<id>, MQ,
--       MQ:seq, roompending:<room>
--       [, push:unread, push:last, push:due: only with [push] url set]
-- ARGV: from (0: the server API's system message), head (the packet up to
--       its seq, no closing brace), dedup ttl, now (Unix ms)
--       [, when the push is due (ms)]: each other member's push is noted
-- Returns 0 (no such room), -1 (not a member), -2 (closed, past its grace),
-- {2, seq, pos} (a retry: the first store's), or {1, seq, pos, member...}
-- (stored; the members it goes to, as numbers: the reply is all integers;
-- the caller knows the entry: head, "seq", "pos").  The membership check is
-- against the stored set, in the same step as the store: a member removed
-- through any node cannot send through another.
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
local seq, pos, entry = store_room_entry(KEYS[1], KEYS[4], KEYS[5], KEYS[6], ARGV[2])
redis.call('SET', KEYS[3], seq .. '/' .. pos, 'EX', ARGV[3])
local out = {1, seq, pos}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = tonumber(m)
  if ARGV[5] and m ~= ARGV[1] then note_push(KEYS[7], KEYS[8], KEYS[9], m, entry, ARGV[5]) end
end
return out
