-- nextbest: write the final state of an entity group that has never been
-- written (the common case of a first backfill): a few multi-field commands
-- instead of one op per update. Only if none of the group's keys exists;
-- otherwise nothing is written and the caller applies the merged updates
-- with apply.lua instead (which dedupes and merges with what is there).
-- KEYS[1]  dedupe sorted set; KEYS[2..] the data keys written
-- ARGV: ttl_seconds, then ops: H k count (field value)... | Z k count (score member)...
-- Returns 1 when written, 0 when some key already existed.
if redis.call('EXISTS', unpack(KEYS)) > 0 then
  return 0
end
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  local key = KEYS[tonumber(ARGV[i + 1])]
  local first = i + 3
  local last = i + 2 + 2 * tonumber(ARGV[i + 2])
  -- in slices of at most 4000 arguments (Lua's stack limit for unpack)
  for c = first, last, 4000 do
    local e = math.min(c + 3999, last)
    if op == 'H' then
      redis.call('HSET', key, unpack(ARGV, c, e))
    elseif op == 'Z' then
      redis.call('ZADD', key, unpack(ARGV, c, e))
    else
      return redis.error_reply('nextbest fresh: unknown op ' .. tostring(op))
    end
  end
  i = last + 1
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  for k = 1, #KEYS do
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
return 1
