-- include: store_entry cancel_push
-- KEYS: MQ, MQ:seq, pending:<reader>, pending:<sender> (the reader's again
--       for the system), unread:<reader>:<sender>, [push:unread, push:last, push:due: only with
--       [push] url set,] then the dedup record of each id.
-- ARGV: reader, state (1|2), "check"|"final", dedup ttl, entry head, entry
--       tail, '1' with [push] url set (else '0'), then per id: its JSON and
--       its seed ('' none, 'x' unknown, else the state found in MySQL: 0, 1
--       or 2).
-- Returns {0, {i...}}: the ids (1-based) without a record, nothing changed
-- ("check" only); or {1, {i...}}: the ids whose state advanced (stored as one
-- entry, the head .. their JSON .. the tail).  The ids that leave "sent"
-- lower the reader's undelivered count, which cancels a waiting push at 0.
-- A read takes the messages up to the latest one read (by pos) out of the
-- reader's unread ones from that sender (contract §10's unread count).
local reader, state = ARGV[1], tonumber(ARGV[2])
local push = ARGV[7] == '1'
local first = push and 8 or 5
local n = #KEYS - first
local values = {}
for i = 1, n do values[i] = redis.call('GET', KEYS[first + i]) end
if ARGV[3] == 'check' then
  local missing = {}
  for i = 1, n do
    if not values[i] then missing[#missing + 1] = i end
  end
  if #missing > 0 then return {0, missing} end
end
local marks = {[0] = '', [1] = ':d', [2] = ':r'}
local advanced, ids, written, delivered, read_up_to = {}, {}, {}, 0, nil
for i = 1, n do
  local key = KEYS[first + i]
  -- (an id named twice: its second time sees what the first wrote)
  local value = written[key] or values[i]
  local seed = ARGV[7 + 2 * i]
  if not value and seed ~= '' and seed ~= 'x' then
    value = reader .. marks[tonumber(seed)]
    redis.call('SET', key, value, 'EX', ARGV[4])
    written[key] = value
  end
  if value then
    -- '<to>[/<seq>][:d|:r]' (imd.stores.messages): the part before ':' is kept
    local head, current = value, 0
    local sep = string.find(value, ':', 1, true)
    if sep then
      head = string.sub(value, 1, sep - 1)
      current = (string.sub(value, sep + 1) == 'r') and 2 or 1
    end
    local to = string.match(head, '^%d+')
    if to == reader and state > current then
      written[key] = head .. marks[state]
      redis.call('SET', key, written[key], 'KEEPTTL')
      advanced[#advanced + 1] = i
      ids[#ids + 1] = ARGV[6 + 2 * i]
      if current == 0 then delivered = delivered + 1 end
      if state == 2 then
        -- the latest message read: the conversation's unread ones up to it are read
        local pos = tonumber(redis.call('ZSCORE', KEYS[5], key))
        if pos and (not read_up_to or pos > read_up_to) then read_up_to = pos end
      end
    end
  end
end
if #advanced > 0 then
  store_entry(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[5] .. table.concat(ids, ',') .. ARGV[6])
end
if read_up_to then redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', read_up_to) end
if push and delivered > 0 then cancel_push(KEYS[6], KEYS[7], KEYS[8], reader, delivered) end
return {1, advanced}
