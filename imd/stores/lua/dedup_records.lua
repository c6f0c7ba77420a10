-- KEYS: dedup records.  One line per key, '<value> <ms left>' (value ''
-- when it expired since the SCAN; ms left -1: no expiry, -2: gone), as one
-- string: a reply of one bulk string is read far faster than one of
-- thousands (imd.stores.queue does the same for its batches).
local out = {}
for i = 1, #KEYS do
  out[i] = (redis.call('GET', KEYS[i]) or '') .. ' ' .. redis.call('PTTL', KEYS[i])
end
return table.concat(out, '\n')
