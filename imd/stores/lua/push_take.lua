-- KEYS: push:due, push:unread, push:last, push:inflight, push:sending, push:born,
--       push:current
-- ARGV: now (ms), limit, lease (ms), delivery key prefix, delay (ms), joins
-- Up to ``limit`` pushes to try now, as a flat list key, record, key, ...:
-- first the in-flight ones whose retry time (or lease) has come, each with
-- its attempt count raised, the user's unread count as it is now, and the
-- user's newest message if a window of the user has ended meanwhile (taken
-- off push:due); then users whose window has ended, each taken off push:due
-- and given a new record -- or, when the user has a push in flight already,
-- joined to it (its record names the newest message from its next try on;
-- not taken now; up to ``joins`` users looked at).  Every one taken is
-- leased until now + lease.  A record that does not parse is dropped (it
-- could only stall every take).
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = {}
local again = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, key in ipairs(again) do
  local record = redis.call('HGET', KEYS[4], key)
  local attempts, head, to, packet
  if record then
    attempts, head, to, packet = string.match(record, '^(%d+) (%d+ %d+) (%d+) %-?%d+ (.*)$')
  end
  if attempts then
    local due_at = redis.call('ZSCORE', KEYS[1], to)
    if due_at and tonumber(due_at) <= now then
      redis.call('ZREM', KEYS[1], to)
      packet = redis.call('HGET', KEYS[3], to) or packet
      redis.call('HDEL', KEYS[3], to)
    end
    local unread = redis.call('HGET', KEYS[2], to) or '0'
    record = string.format('%d', tonumber(attempts) + 1) .. ' ' .. head .. ' ' .. to .. ' ' .. unread .. ' ' .. packet
    redis.call('HSET', KEYS[4], key, record)
    redis.call('ZADD', KEYS[5], now + lease, key)
    redis.call('HSETNX', KEYS[7], to, key)
    taken[#taken + 1] = key
    taken[#taken + 1] = record
  else
    redis.call('HDEL', KEYS[4], key)
    redis.call('ZREM', KEYS[5], key)
    redis.call('ZREM', KEYS[6], key)
  end
end
local room = limit - #again
if room <= 0 then return taken end
-- new pushes until ``room`` are taken; joins do not count, up to ``joins`` looked at
local fresh, looked, budget = 0, 0, math.max(room, tonumber(ARGV[6]))
while fresh < room and looked < budget do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                        math.min(room - fresh, budget - looked))
  if #due == 0 then break end
  for i = 1, #due, 2 do
    looked = looked + 1
    local to = due[i]
    redis.call('ZREM', KEYS[1], to)
    local last = redis.call('HGET', KEYS[3], to)
    local unread = tonumber(redis.call('HGET', KEYS[2], to) or '0')
    if last and unread > 0 then
      redis.call('HDEL', KEYS[3], to)
      local current = redis.call('HGET', KEYS[7], to)
      local record = current and redis.call('HGET', KEYS[4], current)
      local head = record and string.match(record, '^(%d+ %d+ %d+ %d+) ')
      if head then
        redis.call('HSET', KEYS[4], current, head .. ' ' .. string.format('%d', unread) .. ' ' .. last)
      else
        fresh = fresh + 1
        local key = ARGV[4] .. '-' .. string.format('%d', fresh)
        local born = string.format('%d', tonumber(due[i + 1]) - tonumber(ARGV[5]))
        record = '1 ' .. ARGV[1] .. ' ' .. born .. ' ' .. to .. ' ' .. string.format('%d', unread) .. ' ' .. last
        redis.call('HSET', KEYS[4], key, record)
        redis.call('ZADD', KEYS[5], now + lease, key)
        redis.call('ZADD', KEYS[6], born, key)
        redis.call('HSET', KEYS[7], to, key)
        taken[#taken + 1] = key
        taken[#taken + 1] = record
      end
    end
  end
end
return taken
