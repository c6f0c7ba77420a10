-- KEYS: room:<room>, roommembers:<room>, rtyping:<room>:<uid>
-- ARGV: uid, 1|0 (typing), window ms
-- Returns 0 (no such room), -1 (not a member), 2 (a true inside the
-- window: not relayed) or {1, member...} (relay to them).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return -1 end
if ARGV[2] == '1' and ARGV[3] ~= '0' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then return 2 end
end
local out = {1}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do out[#out + 1] = tonumber(m) end
return out
