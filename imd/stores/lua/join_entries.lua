-- join_entries(entries): entries as one newline-joined string (one bulk reply parses far faster
-- than hundreds; stored JSON never holds a raw newline), or as a list when
-- one does.
local function join_entries(entries)
  for i = 1, #entries do
    if string.find(entries[i], '\n', 1, true) then return entries end
  end
  return table.concat(entries, '\n')
end
