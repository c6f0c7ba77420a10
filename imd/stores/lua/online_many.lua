-- include: any_live
-- KEYS: nodes, then dev:<uid> of each uid asked about.  One 0/1 per dev key.
local answers = {}
for i = 2, #KEYS do
  answers[i - 1] = any_live(KEYS[i], KEYS[1]) and 1 or 0
end
return answers
