-- include: frame node_of
-- KEYS: dev:<uid>, nodeusers:<node>
-- ARGV: member, score, max devices, own node, channel prefix, uid
-- Returns the conn ids on this node that the new login pushes out; the
-- other nodes hear of theirs through an 'r' frame.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[6])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
local here = {}
if extra > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, extra - 1)) do
    redis.call('ZREM', KEYS[1], m)
    local node = node_of(m)
    local conn = string.sub(m, #node + 2)
    if node == ARGV[4] then
      table.insert(here, conn)
    else
      redis.call('PUBLISH', ARGV[5] .. node, frame('r', ARGV[6], conn))
    end
  end
end
return here
