-- note_conversation(conv:<a>, convlast:<a>, b, seq, packet, unread:<a>:<b>,
-- member): user a's conversation with b (a uid; 0 the system) moved to
-- seq, its last packet (with its pos) this one; with unread (a message from
-- b to a) the message joins a's unread ones from b, member its dedup
-- record's key (the key a read receipt names it by), score its pos.
local function note_conversation(conv, last, b, seq, packet, unread, member)
  redis.call('ZADD', conv, seq, b)
  redis.call('HSET', last, b, packet)
  if unread then redis.call('ZADD', unread, seq, member) end
end
