-- entry_ts(entry) -> the ts (ms) of an MQ entry the store_entry snippet
-- wrote (its "ts" is the field before the "seq" that snippet appended),
-- or nil for any other text.
local function entry_ts(entry)
  return tonumber(string.match(entry, '"ts":(%d+),"seq":%d+}$'))
end
