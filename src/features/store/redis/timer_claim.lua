-- nextbest: claim the due entries of one shard of the timers' index.
-- KEYS[1] the shard's sorted set, KEYS[2] its gen hash
-- ARGV: now, lease_until, limit
-- Each due entry's score becomes the end of its lease (claimed-until): no
-- other claimer takes it before then, and one that crashed has it claimed
-- again after. Returns member, score before the claim, gen, for each.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]), 'WITHSCORES')
local out = {}
for i = 1, #due, 2 do
  local m = due[i]
  redis.call('ZADD', KEYS[1], ARGV[2], m)
  out[#out + 1] = m
  out[#out + 1] = due[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], m) or '0'
end
return out
