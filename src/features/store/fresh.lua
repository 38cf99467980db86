-- nextbest: write the final state of an entity group that has never been
-- written (the common case of a first backfill): a few multi-field commands
-- instead of one op per update. Only if none of the group's keys exists;
-- otherwise nothing is written and the caller applies the merged updates
-- with apply.lua instead (which dedupes and merges with what is there).
-- KEYS[1]  dedupe sorted set; KEYS[2..] the data keys written
-- ARGV: ttl_seconds, then ops: H k count (field value)... | Z k count (score member)...
-- Returns 1 when written, 0 when some key already existed.
for k = 1, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    return 0
  end
end
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  local key = KEYS[tonumber(ARGV[i + 1])]
  local cnt = tonumber(ARGV[i + 2])
  local args = {}
  for j = 0, 2 * cnt - 1 do
    args[#args + 1] = ARGV[i + 3 + j]
  end
  for c = 1, #args, 1000 do
    local part = {}
    for j = c, math.min(c + 999, #args) do
      part[#part + 1] = args[j]
    end
    if op == 'H' then
      redis.call('HSET', key, unpack(part))
    elseif op == 'Z' then
      redis.call('ZADD', key, unpack(part))
    else
      return redis.error_reply('nextbest fresh: unknown op ' .. tostring(op))
    end
  end
  i = i + 3 + 2 * cnt
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  for k = 1, #KEYS do
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
return 1
