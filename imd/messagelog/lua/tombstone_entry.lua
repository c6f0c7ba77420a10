-- tombstone_entry(MQ, MQ:processing, pending:<a>, pending:<b>, entry, seq)
-- -> the entry with its text gone (contract v3 §11: "msg":"" and
-- "recalled":true in place of its msg, before its "ts" and "seq"), written
-- in its place in every key that holds it: the same position of MQ or
-- MQ:processing (the migrator takes and trims those by position, so a
-- claimed batch keeps its size) and the same score of both pending indexes
-- (trimmed by score).  An entry that is not a message is left as it is.
local function tombstone_entry(mq, processing, pending_a, pending_b, entry, seq)
  local head, tail = string.match(entry, '^({"id":.-,"type":"[^"]","msg":).*(,"ts":%d+,"seq":%d+})$')
  if not head then return entry end
  local new = head .. '"","recalled":true' .. tail
  for _, pending in ipairs({pending_a, pending_b}) do
    if redis.call('ZREM', pending, entry) == 1 then redis.call('ZADD', pending, seq, new) end
  end
  for _, list in ipairs({mq, processing}) do
    local at = redis.call('LPOS', list, entry)
    if at then redis.call('LSET', list, at, new) end
  end
  return new
end
