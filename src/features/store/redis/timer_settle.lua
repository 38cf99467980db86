-- nextbest: settle a claimed entry of the timers' index.
-- KEYS[1] the shard's sorted set, KEYS[2] its gen hash
-- ARGV: member, gen at the claim, next ('' = remove), now
-- Written since the claim (gen moved): due at once, to be looked at again.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return 0
end
local gen = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
if gen ~= ARGV[2] then
  if tonumber(score) > tonumber(ARGV[4]) then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  end
  return 2
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
