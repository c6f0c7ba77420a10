-- include: take_tokens
-- KEYS: roompending:<room>, budget:history:<uid>.
-- ARGV: rate, burst, now (ms), after seq, how many.
-- For H {"room"}: the room's entries not yet migrated whose seq is above
-- the after seq, in accept order, at most how many; or false when the
-- asking user's H budget is spent (a rate of 0: no budget): every form of
-- H spends the one per-user budget.  The set's score is the accept order
-- (pos), which a room's seq follows (store_room_entry takes both in one
-- step), so the first entry above the seq is found by a binary search on
-- rank: log(n) single-entry reads, whatever the backlog (the room's migrator
-- stopped).  An entry's seq is its last ',"seq":N,"pos":' (a packet's own
-- fields come last; a string in it has its quotes escaped); an entry not
-- so written answers them all, as before.
if not take_tokens(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 1) then return false end
local key, after, want = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local function seq_at(rank)
  local entry = redis.call('ZRANGE', key, rank, rank)[1]
  local seq
  for found in string.gmatch(entry, ',"seq":(%d+),"pos":') do seq = found end
  return tonumber(seq)
end
local lo, hi = 0, redis.call('ZCARD', key)
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  local seq = seq_at(mid)
  if not seq then return redis.call('ZRANGE', key, 0, -1) end
  if seq > after then hi = mid else lo = mid + 1 end
end
if want < 1 then return {} end
return redis.call('ZRANGE', key, lo, lo + want - 1)
