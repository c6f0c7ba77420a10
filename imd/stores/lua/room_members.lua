-- include: store_room_entry room_fanout
-- KEYS: room:<room>, roommembers:<room>, MQ, MQ:seq, roompending:<room>,
--       roomread:<room>, roomspans:<room>, then roomsof:<uid> of each uid
--       to add (in ARGV's order), then for each uid of ARGV's last
--       (in its order) dev:<uid>, roomconv:<uid>, roomgone:<uid>,
--       roommine:<room>:<uid>
-- ARGV: mode ('set': create the room or set its members; 'change': add and
--       remove), now (Unix ms), max_members, meta (JSON; '' keeps it), the
--       room's id, number of uids to add, those uids, then the uids to remove,
--       then the channel prefix ('': publish nothing, the caller delivers)
--       and the uids the caller passed keys for (comma-separated: the room's
--       members as it knows them, and those to add).
-- Returns 0 (no such room: 'change' only), -1 (more than max_members:
-- nothing changed), {'stale', member...} (a member the caller passed no
-- keys for: nothing changed, call again with these), or {1, members
-- (comma-separated), then per event its entry and its recipients
-- (comma-separated)}.  Creating announces
-- nothing; a later change stores a system message per member joined or
-- left (contract v3 §9), each taking the next seq.  A member removed gets
-- its own "left" (it is among that event's recipients).
-- A member's spans (roomspans:<room>, uid -> "from:to,from:..."): the
-- positions (accept order) of the room's messages in its stream (contract
-- §10): those above MQ:seq when it was added, up to its "left" (included).
-- Each event is published to its recipients' nodes (room_fanout) and is
-- the room's latest in their conversation lists; a removed member keeps
-- its row as it was at its "left" (roomgone: '<unread> <left packet>').
local room_key, members_key = KEYS[1], KEYS[2]
local exists = redis.call('EXISTS', room_key) == 1
if ARGV[1] == 'change' and not exists then return 0 end
local n_add = tonumber(ARGV[6])
local add, rm, want = {}, {}, {}
for i = 7, 6 + n_add do add[#add + 1] = ARGV[i]; want[ARGV[i]] = true end
for i = 7 + n_add, #ARGV - 2 do rm[#rm + 1] = ARGV[i] end
local current = {}
for _, m in ipairs(redis.call('SMEMBERS', members_key)) do current[m] = true end
local prefix, keyed = ARGV[#ARGV - 1], {}
local keys_at = 8 + n_add
for m in string.gmatch(ARGV[#ARGV], '[^,]+') do keyed[m] = keys_at; keys_at = keys_at + 4 end
for m in pairs(current) do
  if not keyed[m] then
    local out = {'stale'}
    for s in pairs(current) do out[#out + 1] = s end
    return out
  end
end
if ARGV[1] == 'set' then
  rm = {}
  for m in pairs(current) do if not want[m] then rm[#rm + 1] = m end end
  table.sort(rm, function(a, b) return tonumber(a) < tonumber(b) end)
end
-- the members after the change, counted before anything is written
local after, count = {}, 0
for m in pairs(current) do after[m] = true end
for _, m in ipairs(rm) do after[m] = nil end
for _, m in ipairs(add) do after[m] = true end
for _ in pairs(after) do count = count + 1 end
if count > tonumber(ARGV[3]) then return -1 end
local now = ARGV[2]
local name = cjson.encode(ARGV[5])
local events = {}
local spans_key = KEYS[7]
local function open_span(uid, i)
  local spans = redis.call('HGET', spans_key, uid)
  local start = redis.call('GET', KEYS[4]) or '0'
  redis.call('HSET', spans_key, uid, (spans and spans .. ',' or '') .. start .. ':')
  redis.call('SADD', KEYS[7 + i], ARGV[5])
end
local function close_span(uid, pos)
  local spans = redis.call('HGET', spans_key, uid)
  if spans and string.sub(spans, -1) == ':' then redis.call('HSET', spans_key, uid, spans .. pos) end
end
local add_index = {}
for i, m in ipairs(add) do add_index[m] = i end
local function csv()
  return table.concat(redis.call('SMEMBERS', members_key), ',')
end
local function event(kind, uid, recipients)
  local _, pos, entry = store_room_entry(room_key, KEYS[3], KEYS[4], KEYS[5], function(seq)
    return '{"id":"' .. kind .. '-' .. seq .. '","from":0,"room":' .. name .. ',"type":"s","msg":{"room":' ..
      name .. ',"event":"' .. kind .. '","uid":' .. uid .. '},"ts":' .. now
  end)
  events[#events + 1] = entry
  events[#events + 1] = recipients
  local uids, devs, convs = {}, {}, {}
  for m in string.gmatch(recipients, '[^,]+') do
    local j = #uids + 1
    uids[j], devs[j], convs[j] = m, KEYS[keyed[m]], KEYS[keyed[m] + 1]
  end
  room_note(room_key, ARGV[5], pos, entry, convs)
  room_fanout(prefix, '', '0', entry, uids, devs)
  return pos, entry
end
-- a removed member's row, frozen at its "left": unread as it was then
local function gone(uid, entry)
  local k = keyed[uid]
  local cursor = tonumber(redis.call('HGET', KEYS[6], uid) or '0')
  local mine = redis.call('ZCOUNT', KEYS[k + 3], '(' .. cursor, '+inf')
  local unread = math.max(0, tonumber(redis.call('HGET', room_key, 'seq')) - cursor - mine)
  redis.call('HSET', KEYS[k + 2], ARGV[5], unread .. ' ' .. entry)
end
if not exists then
  redis.call('HSET', room_key, 'seq', 0, 'created_at', now, 'meta', ARGV[4] ~= '' and ARGV[4] or '{}')
  for i, m in ipairs(add) do
    redis.call('SADD', members_key, m)
    open_span(m, i)
    redis.call('HDEL', KEYS[keyed[m] + 2], ARGV[5])
  end
else
  if ARGV[4] ~= '' then redis.call('HSET', room_key, 'meta', ARGV[4]) end
  for _, m in ipairs(rm) do
    if current[m] then
      local pos, entry = event('left', m, csv())
      close_span(m, pos)
      gone(m, entry)
      redis.call('SREM', members_key, m)
      redis.call('HDEL', KEYS[6], m)
      current[m] = nil
    end
  end
  for _, m in ipairs(add) do
    if not current[m] then
      redis.call('SADD', members_key, m)
      current[m] = true
      open_span(m, add_index[m])
      redis.call('HDEL', KEYS[keyed[m] + 2], ARGV[5])
      event('joined', m, csv())
    end
  end
end
local out = {1, csv()}
for _, v in ipairs(events) do out[#out + 1] = v end
return out
