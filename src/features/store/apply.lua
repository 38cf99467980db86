-- nextbest: apply one event's updates to one entity group (one cluster slot).
-- Mirrors src/features/aggregate.rs `apply_update` exactly.
-- KEYS[1]  dedupe sorted set (member event id, score event ts)
-- KEYS[2..] data keys referenced by the ops
-- ARGV: event_id, ts, dedupe_window_ms, ttl_seconds, buckets_per_window, ops...
-- ops:  A k field amount | W k field bucket amount | L k field ts seq value
--       T k field ts | R k member ts cap | S k ts amount | X k ts
-- Returns 1 when applied, 0 when the event id was already seen.
local seen = KEYS[1]
local id = ARGV[1]
local ts = tonumber(ARGV[2])
if redis.call('ZSCORE', seen, id) then
  return 0
end
redis.call('ZADD', seen, ts, id)
redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. string.format('%d', ts - tonumber(ARGV[3])))
local n = tonumber(ARGV[5])
local i = 6
while i <= #ARGV do
  local op = ARGV[i]
  local key = KEYS[tonumber(ARGV[i + 1])]
  if op == 'A' then
    redis.call('HINCRBYFLOAT', key, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'W' then
    local f = ARGV[i + 2]
    local b = tonumber(ARGV[i + 3])
    local m = redis.call('HGET', key, f .. '|max')
    local skip = false
    if m then
      m = tonumber(m)
      if b <= m - n then
        skip = true
      elseif b > m then
        for j = m - n + 1, math.min(b - n, m) do
          redis.call('HDEL', key, f .. '|' .. string.format('%d', j))
        end
        redis.call('HSET', key, f .. '|max', ARGV[i + 3])
      end
    else
      redis.call('HSET', key, f .. '|max', ARGV[i + 3])
    end
    if not skip then
      redis.call('HINCRBYFLOAT', key, f .. '|' .. ARGV[i + 3], ARGV[i + 4])
    end
    i = i + 5
  elseif op == 'L' then
    local f = ARGV[i + 2]
    local t = tonumber(ARGV[i + 3])
    local q = tonumber(ARGV[i + 4])
    local v = ARGV[i + 5]
    local cur = redis.call('HMGET', key, f .. '|t', f .. '|q', f)
    local newer = true
    if cur[1] then
      local ct = tonumber(cur[1])
      local cq = tonumber(cur[2] or '0')
      if t < ct or (t == ct and q < cq) then
        newer = false
      elseif t == ct and q == cq then
        newer = (not cur[3]) or (v > cur[3])
      end
    end
    if newer then
      redis.call('HSET', key, f .. '|t', ARGV[i + 3], f .. '|q', ARGV[i + 4], f, v)
    end
    i = i + 6
  elseif op == 'T' then
    local f = ARGV[i + 2]
    local c = redis.call('HGET', key, f)
    if (not c) or tonumber(c) < tonumber(ARGV[i + 3]) then
      redis.call('HSET', key, f, ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'R' then
    redis.call('ZADD', key, 'GT', ARGV[i + 3], ARGV[i + 2])
    redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(ARGV[i + 4]) + 1))
    i = i + 5
  elseif op == 'S' then
    local rts = tonumber(redis.call('HGET', key, 'rts') or '0')
    if tonumber(ARGV[i + 2]) > rts then
      redis.call('HINCRBYFLOAT', key, ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'X' then
    local t = tonumber(ARGV[i + 2])
    local rts = tonumber(redis.call('HGET', key, 'rts') or '0')
    if t > rts then
      redis.call('HSET', key, 'rts', ARGV[i + 2])
      for _, fld in ipairs(redis.call('HKEYS', key)) do
        if fld ~= 'rts' and tonumber(fld) <= t then
          redis.call('HDEL', key, fld)
        end
      end
    end
    i = i + 3
  else
    return redis.error_reply('nextbest apply: unknown op ' .. tostring(op))
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for k = 1, #KEYS do
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
return 1
