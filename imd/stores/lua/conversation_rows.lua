-- KEYS: convlast:<uid>, then unread:<uid>:<other> of each conversation.
-- ARGV: each conversation's other party (as conv:<uid> names it).
-- {last packet, unread count, ...} of each, in that order (false: no last).
local out = {}
for i = 1, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
  out[#out + 1] = redis.call('ZCARD', KEYS[i + 1])
end
return out
