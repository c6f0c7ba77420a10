-- store_entry(MQ, MQ:seq, pending:<a>, pending:<b>, packet JSON) -> seq:
-- what every script that stores an entry shares: the accept order, MQ and
-- both parties' pending index, in one go.  The entry is the packet with
-- "seq" added as its last field: imd/messagelog/entry.py reads it back.
local function store_entry(mq, seq_key, pending_a, pending_b, packet)
  local seq = redis.call('INCR', seq_key)
  local entry = string.sub(packet, 1, -2) .. ',"seq":' .. seq .. '}'
  redis.call('LPUSH', mq, entry)
  redis.call('ZADD', pending_a, seq, entry)
  if pending_b ~= pending_a then redis.call('ZADD', pending_b, seq, entry) end
  return seq
end
