-- include: take_tokens entry_ts
-- KEYS: pending:<reader>, budget:lookups:<reader>.
-- ARGV: rate, burst, now (ms) of the lookup budget (rate 0: not charged),
--       the score to start after ('-inf' first, else '(<seq>'), the ts limit
--       (ms), how many entries to scan at most, then the needles.
-- The reader's pending entries older than the limit (by accept order, from
-- the oldest; the first one at or past the limit ends the scan) that hold
-- one of the needles: {done (0/1), where to go on, matches...}; false when
-- the budget is spent (nothing read).  Read 1, 8, 64... entries at a time:
-- while the migrator keeps up, the oldest entry is young and the only one read.
if not take_tokens(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 1) then return false end
local limit, most = tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {0, ARGV[4]}
local scanned, step = 0, 1
while scanned < most do
  local n = math.min(step, most - scanned)
  local entries = redis.call('ZRANGEBYSCORE', KEYS[1], out[2], '+inf', 'WITHSCORES', 'LIMIT', 0, n)
  for i = 1, #entries, 2 do
    local entry = entries[i]
    local ts = entry_ts(entry)
    if ts and ts >= limit then
      out[1] = 1
      return out
    end
    out[2] = '(' .. entries[i + 1]
    for j = 7, #ARGV do
      if string.find(entry, ARGV[j], 1, true) then
        out[#out + 1] = entry
        break
      end
    end
  end
  if #entries < 2 * n then
    out[1] = 1
    return out
  end
  scanned = scanned + n
  step = math.min(step * 8, 512)
end
return out
