-- KEYS: roomspans:<room>, roompending:<room>, for each room of the user
-- ARGV: uid, after pos, how many (at most, per span)
-- Returns per room: the user's spans there ('' when none) and the room's
-- entries not yet migrated above the pos within them, in accept order
-- span by span, the first 'how many' of each span: a sync's page takes
-- no more from one source, so a backlog (the migrator stopped) costs a
-- page what the page holds, not the whole backlog at each page.  (The
-- bounds are the spans' own text: no number goes through a float.)
local after, want = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS, 2 do
  local spans = redis.call('HGET', KEYS[i], ARGV[1]) or ''
  out[#out + 1] = spans
  local entries = {}
  for from, to in string.gmatch(spans, '(%d+):(%d*)') do
    local low = ARGV[2]
    if tonumber(from) > after then low = from end
    if to == '' or tonumber(to) > tonumber(low) then
      local found = redis.call('ZRANGEBYSCORE', KEYS[i + 1], '(' .. low, to == '' and '+inf' or to,
                               'LIMIT', 0, want)
      for _, entry in ipairs(found) do entries[#entries + 1] = entry end
    end
  end
  out[#out + 1] = entries
end
return out
