-- include: join_entries
-- KEYS: lock, processing, MQ.  ARGV: token, batch size, more (0/1).
-- Returns false when the caller does not hold the lock, else
-- {replayed (0/1), entries newest first, count}.
-- With more = 0 (a leader's first claim, or its first after a failure) the
-- batches left in MQ:processing, if any, come back whole (replayed = 1).
-- With more = 1 the leader claims its next batch while the ones it claimed
-- before are still being inserted: those stay where they are.
-- A batch is the oldest ``batch`` entries (the tail of MQ), moved with one
-- LRANGE, LTRIM and LPUSH (in slices: Lua's unpack has a limit) rather than
-- one LMOVE each: 2.4 -> 1.4 ms of Redis per 500 entries, during which Redis
-- serves nobody else.  It goes on at the head of MQ:processing, so that list
-- holds its batches in MQ's order, the oldest batch at the tail.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local entries
if ARGV[3] ~= '1' then
  entries = redis.call('LRANGE', KEYS[2], 0, -1)
  if #entries > 0 then return {1, join_entries(entries), #entries} end
end
local n = tonumber(ARGV[2])
entries = redis.call('LRANGE', KEYS[3], -n, -1)
if #entries > 0 then
  redis.call('LTRIM', KEYS[3], 0, -n - 1)
  local reversed = {}
  for i = #entries, 1, -1 do reversed[#reversed + 1] = entries[i] end
  for i = 1, #reversed, 1000 do
    redis.call('LPUSH', KEYS[2], unpack(reversed, i, math.min(i + 999, #reversed)))
  end
end
return {0, join_entries(entries), #entries}
