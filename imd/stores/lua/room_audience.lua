-- The rooms a courier's position goes to (contract §11, [privacy]
-- positions = orders): of the rooms roomtrack:<courier> names (a hint,
-- written before the room's meta), those whose meta has "track": <courier>
-- and that are not closed, each with its members.  Read at every push, so
-- a close through any node counts from the next push on.
-- KEYS: room:<room>, roommembers:<room> for each room named.
-- ARGV: the courier's uid.
-- Returns, for each room in order: its members (a list: the room gets the
-- position), or 0 (no longer tracks the courier, closed or gone: the
-- caller drops it from the hint).
local courier = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  local fields = redis.call('HMGET', KEYS[i], 'meta', 'closed_at')
  local tracked = false
  if fields[1] and not fields[2] then
    local ok, meta = pcall(cjson.decode, fields[1])
    tracked = ok and type(meta) == 'table' and meta.track == courier
  end
  if tracked then
    out[#out + 1] = redis.call('SMEMBERS', KEYS[i + 1])
  else
    out[#out + 1] = 0
  end
end
return out
