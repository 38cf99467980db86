-- nextbest: apply the updates of one or more events to one entity group (one
-- cluster slot), exactly once. Mirrors `aggregate::apply_update`.
-- The streaming path sends one event per call; the backfill sends the merged
-- (commutative) updates of many events of one group with all their ids.
-- KEYS[1]  dedupe sorted set (member event id, score event ts)
-- KEYS[2..] data keys referenced by the ops
-- ARGV: n, then n pairs (event_id, ts), then dedupe_window_ms, ttl_seconds,
--       buckets_per_window, ops...
-- ops:  A k field amount | W k field bucket amount | L k field ts seq value
--       T k field ts | R k member ts cap | S k ts amount | X k ts | V k field value
--       WB k field count (bucket amount)... | RB k cap count (member ts)...
-- n = 0 (static enrichment) skips the dedupe.
-- Returns 1 when applied; otherwise nothing was written and the reply lists
-- the event ids already seen (the caller drops them and retries the rest).
local seen = KEYS[1]
local nids = tonumber(ARGV[1])
local window = tonumber(ARGV[2 * nids + 2])
if nids > 0 then
  local dups = {}
  local maxts = nil
  for c = 0, nids - 1, 500 do
    local ids = {}
    for j = c, math.min(c + 499, nids - 1) do
      ids[#ids + 1] = ARGV[2 + 2 * j]
      local t = tonumber(ARGV[3 + 2 * j])
      if (not maxts) or t > maxts then
        maxts = t
      end
    end
    local scores = redis.call('ZMSCORE', seen, unpack(ids))
    for j = 1, #ids do
      if scores[j] then
        dups[#dups + 1] = ids[j]
      end
    end
  end
  if #dups > 0 then
    return dups
  end
  local cutoff = maxts - window
  for c = 0, nids - 1, 500 do
    local args = {}
    for j = c, math.min(c + 499, nids - 1) do
      local t = tonumber(ARGV[3 + 2 * j])
      if t >= cutoff then
        args[#args + 1] = ARGV[3 + 2 * j]
        args[#args + 1] = ARGV[2 + 2 * j]
      end
    end
    if #args > 0 then
      redis.call('ZADD', seen, unpack(args))
    end
  end
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. string.format('%d', cutoff))
end
local base = 2 * nids + 1
local n = tonumber(ARGV[base + 3])
local i = base + 4
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
  elseif op == 'WB' then
    -- many buckets of one window at once (backfill): WB k field count b1 a1 ...
    -- same result as one W op per bucket: the newest bucket sets max, older
    -- buckets outside the window are dropped or skipped
    local f = ARGV[i + 2]
    local cnt = tonumber(ARGV[i + 3])
    local top = nil
    for j = 0, cnt - 1 do
      local b = tonumber(ARGV[i + 4 + 2 * j])
      if (not top) or b > top then
        top = b
      end
    end
    local m = redis.call('HGET', key, f .. '|max')
    local newmax = top
    if m then
      m = tonumber(m)
      if m > top then
        newmax = m
      elseif top > m then
        local dead = {}
        for j = m - n + 1, math.min(top - n, m) do
          dead[#dead + 1] = f .. '|' .. string.format('%d', j)
        end
        if #dead > 0 then
          redis.call('HDEL', key, unpack(dead))
        end
      end
    end
    if (not m) or newmax > m then
      redis.call('HSET', key, f .. '|max', string.format('%d', newmax))
    end
    for j = 0, cnt - 1 do
      local bs = ARGV[i + 4 + 2 * j]
      if tonumber(bs) > newmax - n then
        redis.call('HINCRBYFLOAT', key, f .. '|' .. bs, ARGV[i + 5 + 2 * j])
      end
    end
    i = i + 4 + 2 * cnt
  elseif op == 'RB' then
    -- many members of one recent list at once (backfill): RB k cap count m1 t1 ...
    local cnt = tonumber(ARGV[i + 3])
    local args = {}
    for j = 0, cnt - 1 do
      args[#args + 1] = ARGV[i + 5 + 2 * j]
      args[#args + 1] = ARGV[i + 4 + 2 * j]
    end
    redis.call('ZADD', key, 'GT', unpack(args))
    redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(ARGV[i + 2]) + 1))
    i = i + 4 + 2 * cnt
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
  elseif op == 'V' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  else
    return redis.error_reply('nextbest apply: unknown op ' .. tostring(op))
  end
end
local ttl = tonumber(ARGV[base + 2])
if ttl > 0 then
  for k = 1, #KEYS do
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
return 1
