-- store_room_entry(room:<room>, MQ, MQ:seq, roompending:<room>, head) ->
-- seq, pos, entry: a room's message (contract v3 §9) stored once, whatever
-- the number of members: the room's next seq (HINCRBY of the room hash's
-- "seq": no gap, never reused) and the next accept order (its pos) in one
-- go.  ``head`` is the packet without its closing brace, or a function of
-- the seq giving it (a system event's id holds its seq); the entry is the
-- packet as delivered: head, "seq", "pos".  imd/messagelog/entry.py reads it.
local function store_room_entry(room_key, mq, seq_key, pending, head)
  local seq = redis.call('HINCRBY', room_key, 'seq', 1)
  local pos = redis.call('INCR', seq_key)
  if type(head) == 'function' then head = head(seq) end
  local entry = head .. ',"seq":' .. seq .. ',"pos":' .. pos .. '}'
  redis.call('LPUSH', mq, entry)
  redis.call('ZADD', pending, pos, entry)
  return seq, pos, entry
end
