-- frame(kind, uid, rest): a bus frame, as imd.busframes encodes it, for the
-- scripts that publish to other nodes (the codec's Lua half).
local function frame(kind, uid, rest)
  return kind .. ' ' .. uid .. ' ' .. rest
end
