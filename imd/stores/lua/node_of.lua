-- node_of(member): the node of a dev:<uid> member '<node> <conn id>'.
local function node_of(member)
  return string.sub(member, 1, string.find(member, ' ', 1, true) - 1)
end
