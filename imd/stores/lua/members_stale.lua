-- members_stale(roommembers:<room>, first, n): nil when ARGV[first ..
-- first + n - 1], the members the caller named (its cache, imd.stores.rooms),
-- are the room's members; else {'stale', member...}, what the script answers
-- instead of storing anything (the caller sends again with these).  A
-- script can only touch the keys it is given, and each member's keys are
-- named by the caller: this is how a stale cache is caught.
local function members_stale(members_key, first, n)
  local fresh = redis.call('SCARD', members_key) == n
  for i = first, first + n - 1 do
    if not fresh then break end
    fresh = redis.call('SISMEMBER', members_key, ARGV[i]) == 1
  end
  if fresh then return nil end
  local out = {'stale'}
  for _, m in ipairs(redis.call('SMEMBERS', members_key)) do out[#out + 1] = m end
  return out
end
