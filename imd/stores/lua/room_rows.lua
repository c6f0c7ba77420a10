-- KEYS: roomgone:<uid>, then for each room in ARGV: room:<room>,
--       roommembers:<room>, roomread:<room>, roommine:<room>:<uid>
-- ARGV: uid, then the rooms (as roomconv:<uid> lists them)
-- {last packet, unread, ...} of each room, in that order (false: no
-- row).  A member's row: the room's latest packet and the messages above
-- its read cursor but its own (seq - cursor - own ones above the cursor);
-- a removed member's: its "left" and the unread it had then (roomgone).
local out = {}
for i = 2, #ARGV do
  local b = 2 + 4 * (i - 2)
  if redis.call('SISMEMBER', KEYS[b + 1], ARGV[1]) == 1 then
    local seq = tonumber(redis.call('HGET', KEYS[b], 'seq') or '0')
    local cursor = tonumber(redis.call('HGET', KEYS[b + 2], ARGV[1]) or '0')
    local mine = redis.call('ZCOUNT', KEYS[b + 3], '(' .. cursor, '+inf')
    out[#out + 1] = redis.call('HGET', KEYS[b], 'last')
    out[#out + 1] = math.max(0, seq - cursor - mine)
  else
    local gone = redis.call('HGET', KEYS[1], ARGV[i])
    if gone then
      local at = string.find(gone, ' ', 1, true)
      out[#out + 1] = string.sub(gone, at + 1)
      out[#out + 1] = tonumber(string.sub(gone, 1, at - 1))
    else
      out[#out + 1] = false
      out[#out + 1] = 0
    end
  end
end
return out
