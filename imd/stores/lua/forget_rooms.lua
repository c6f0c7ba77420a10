-- What the rooms kept about an erased user (contract v3 §11), once it has
-- left them all: its spans and read cursor in each room it was in, and last
-- the list of those rooms.  Repeating it changes nothing.
-- KEYS: roomspans:<room>, roomread:<room> of each room, then roomsof:<uid>.
-- ARGV: uid.
for i = 1, #KEYS - 1 do redis.call('HDEL', KEYS[i], ARGV[1]) end
redis.call('DEL', KEYS[#KEYS])
return #KEYS - 1
