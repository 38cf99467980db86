-- nextbest: end a fired trigger episode (the customer's slot).
-- KEYS[1] the customer's timer records (hash: trigger → episode \t started \t deadline)
-- ARGV: trigger, episode
-- Removes the record if it is still that episode; returns the deadline of
-- the record left (another episode), or nil.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  return false
end
local ep, st, dl = string.match(cur, '^(.*)\t(%-?%d+)\t(%-?%d+)$')
if ep == ARGV[2] or not dl then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return false
end
return dl
