-- nextbest: apply the updates of one or more events to one entity group (one
-- cluster slot), exactly once. Mirrors `aggregate::apply_update`.
-- The streaming path sends one event per call; the backfill sends the merged
-- (commutative) updates of many events of one group with all their ids.
-- KEYS[1]  dedupe sorted set (member event id, score event ts)
-- KEYS[2..] data keys referenced by the ops
-- ARGV: n, then n pairs (event_id, ts), then dedupe_window_ms, ttl_seconds,
--       buckets_per_window, now_ms (the writer's clock), ops...
-- ops:  A k field amount | W k field bucket amount cut | L k field ts seq value
--       T k field ts | R k member ts cap | S k ts amount | X k ts | V k field value
--       WB k field cut count (bucket amount)... | RB k cap count (member ts)...
--       (cut: the newest bucket a read at now_ms no longer sees)
--       timer records (`store::timers`; hash field trigger → episode\tstarted\tdeadline):
--       TS k trigger episode started deadline | TU k trigger deadline | TC k trigger ts
--       B k src: the string k set to the hash KEYS[src]'s fields and values,
--       one cmsgpack array (an item's blob, what reads fetch; sent last)
-- n = 0 (static enrichment) skips the dedupe.
-- All or nothing: the ops are checked first (known, naming their keys, not
-- cut short, every key of the type its ops need, every lifetime count or
-- sum they add to a number; the numbers in the ops are `encode`'s, printed
-- from Rust numbers, and not parsed twice), and the event ids are recorded
-- only after the ops ran, so an error leaves nothing written and a retry
-- applies the event whole.
-- Returns 1 when applied; otherwise nothing was written and the reply lists
-- the event ids already seen (the caller drops them and retries the rest).
local seen = KEYS[1]
local nids = tonumber(ARGV[1])
local base = 2 * nids + 1
local window = tonumber(ARGV[base + 1])
local ttl_s = ARGV[base + 2]
local ttl = tonumber(ttl_s)
local now = tonumber(ARGV[base + 4])
local maxts = nil
if nids > 0 then
  local dups = {}
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
end

-- Check every op before writing anything.
local function fail(msg)
  return redis.error_reply(msg)
end
local op_args = { A = 4, W = 6, L = 6, T = 4, R = 5, S = 4, X = 3, V = 4, TS = 6, TU = 4, TC = 4, B = 3 }
local key_type = { A = 'hash', W = 'hash', WB = 'hash', L = 'hash', T = 'hash', V = 'hash',
  R = 'zset', RB = 'zset', S = 'hash', X = 'hash', TS = 'hash', TU = 'hash', TC = 'hash', B = 'string' }
local need = {}
local blobs = {}
local adds = {}
local i = base + 5
while i <= #ARGV do
  local op = ARGV[i]
  local k = tonumber(ARGV[i + 1])
  if not key_type[op] then
    return fail('ERR nextbest apply: unknown op ' .. tostring(op))
  end
  if (not k) or (not KEYS[k]) or k < 2 then
    return fail('ERR nextbest apply: op ' .. op .. ' names no key')
  end
  if need[k] and need[k] ~= key_type[op] then
    return fail('ERR nextbest apply: key ' .. KEYS[k] .. ' used as both hash and zset')
  end
  need[k] = key_type[op]
  if op == 'B' then
    blobs[k] = true
  end
  local width
  if op == 'WB' or op == 'RB' then
    local cnt = tonumber(ARGV[i + 4 - (op == 'RB' and 1 or 0)])
    if op == 'WB' then
      if (not cnt) or (not tonumber(ARGV[i + 3])) then
        return fail('ERR nextbest apply: malformed WB op')
      end
      width = 5 + 2 * cnt
    else
      if (not cnt) or (not tonumber(ARGV[i + 2])) then
        return fail('ERR nextbest apply: malformed RB op')
      end
      width = 4 + 2 * cnt
    end
  else
    width = op_args[op]
    if op == 'B' then
      local src = tonumber(ARGV[i + 2])
      if (not KEYS[src]) or src < 2 or (need[src] and need[src] ~= 'hash') then
        return fail('ERR nextbest apply: op B names no hash to pack')
      end
      need[src] = 'hash'
    end
    if op == 'A' then
      -- (window buckets `f|<n>` are only ever written by these ops)
      adds[#adds + 1] = { KEYS[k], ARGV[i + 2] }
    end
  end
  if i + width - 1 > #ARGV then
    return fail('ERR nextbest apply: op ' .. op .. ' is cut short')
  end
  i = i + width
end
-- (a blob is SET whatever the key held: no type to check)
for k, t in pairs(need) do
  local have = blobs[k] and 'none' or redis.call('TYPE', KEYS[k])['ok']
  if have ~= 'none' and have ~= t then
    return fail('WRONGTYPE nextbest apply: key ' .. KEYS[k] .. ' holds a ' .. have .. ', not a ' .. t)
  end
end
for _, kf in ipairs(adds) do
  local v = redis.call('HGET', kf[1], kf[2])
  if v and not tonumber(v) then
    return fail('ERR nextbest apply: field ' .. kf[2] .. ' of ' .. kf[1] .. ' is not a number')
  end
end

-- Strings compared by bytes (Lua's `<` follows the server's locale).
local function bytes_greater(a, b)
  local n = math.min(#a, #b)
  for p = 1, n do
    local x, y = string.byte(a, p), string.byte(b, p)
    if x ~= y then
      return x > y
    end
  end
  return #a > #b
end

-- Prunes a window to `cut` (the buckets a read at now no longer sees),
-- given its `|lo` field (or nil); returns the newest bucket pruned so far.
local function prune(key, f, cut, lo)
  if not lo then
    redis.call('HSET', key, f .. '|lo', string.format('%d', cut))
    return cut
  end
  lo = tonumber(lo)
  if cut <= lo then
    return lo
  end
  local dead = {}
  if cut - lo <= 64 then
    for j = lo + 1, cut do
      dead[#dead + 1] = f .. '|' .. string.format('%d', j)
    end
  else
    local prefix = f .. '|'
    for _, fld in ipairs(redis.call('HKEYS', key)) do
      if string.sub(fld, 1, #prefix) == prefix then
        local b = tonumber(string.sub(fld, #prefix + 1))
        if b and b <= cut then
          dead[#dead + 1] = fld
        end
      end
    end
  end
  for c = 1, #dead, 500 do
    redis.call('HDEL', key, unpack(dead, c, math.min(c + 499, #dead)))
  end
  redis.call('HSET', key, f .. '|lo', string.format('%d', cut))
  return cut
end

i = base + 5
while i <= #ARGV do
  local op = ARGV[i]
  local key = KEYS[tonumber(ARGV[i + 1])]
  if op == 'A' then
    redis.call('HINCRBYFLOAT', key, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'W' then
    local f = ARGV[i + 2]
    local b = tonumber(ARGV[i + 3])
    local cut = tonumber(ARGV[i + 5])
    -- as apply_update: prune when the window exists or this bucket starts it
    local lo = redis.call('HGET', key, f .. '|lo')
    if b > cut or lo then
      lo = prune(key, f, cut, lo)
      if b > lo then
        redis.call('HINCRBYFLOAT', key, f .. '|' .. ARGV[i + 3], ARGV[i + 4])
      end
    end
    i = i + 6
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
        newer = (not cur[3]) or bytes_greater(v, cur[3])
      end
    end
    if newer then
      redis.call('HSET', key, f .. '|t', ARGV[i + 3], f .. '|q', ARGV[i + 4], f, v)
    end
    i = i + 6
  elseif op == 'WB' then
    -- many buckets of one window at once (backfill): WB k field cut count b1 a1 ...
    -- the same as one W op per bucket
    local f = ARGV[i + 2]
    local cut = tonumber(ARGV[i + 3])
    local cnt = tonumber(ARGV[i + 4])
    local lo = redis.call('HGET', key, f .. '|lo')
    if lo then
      lo = prune(key, f, cut, lo)
    end
    for j = 0, cnt - 1 do
      local bs = ARGV[i + 5 + 2 * j]
      local b = tonumber(bs)
      if b > cut then
        lo = lo or prune(key, f, cut, nil)
        if b > lo then
          redis.call('HINCRBYFLOAT', key, f .. '|' .. bs, ARGV[i + 6 + 2 * j])
        end
      end
    end
    i = i + 5 + 2 * cnt
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
  elseif op == 'B' then
    local all = redis.call('HGETALL', KEYS[tonumber(ARGV[i + 2])])
    if #all > 0 and ttl > 0 then
      redis.call('SET', key, cmsgpack.pack(all), 'EX', ttl_s)
    elseif #all > 0 then
      redis.call('SET', key, cmsgpack.pack(all))
    else
      redis.call('DEL', key)
    end
    i = i + 3
  elseif op == 'TS' or op == 'TU' or op == 'TC' then
    -- a trigger's pending episode, as `TimerRecord::apply`
    local f = ARGV[i + 2]
    local cur = redis.call('HGET', key, f)
    local ep, st, dl = nil, nil, nil
    if cur then
      ep, st, dl = string.match(cur, '^(.*)\t(%-?%d+)\t(%-?%d+)$')
    end
    if op == 'TS' then
      if not dl then
        redis.call('HSET', key, f, ARGV[i + 3] .. '\t' .. ARGV[i + 4] .. '\t' .. ARGV[i + 5])
      elseif tonumber(ARGV[i + 5]) > tonumber(dl) then
        redis.call('HSET', key, f, ep .. '\t' .. st .. '\t' .. ARGV[i + 5])
      end
      i = i + 6
    elseif op == 'TU' then
      if dl and tonumber(ARGV[i + 3]) > tonumber(dl) then
        redis.call('HSET', key, f, ep .. '\t' .. st .. '\t' .. ARGV[i + 3])
      end
      i = i + 4
    else
      if dl and tonumber(ARGV[i + 3]) >= tonumber(st) then
        redis.call('HDEL', key, f)
      end
      i = i + 4
    end
  end
end
-- the ops ran: only now are the ids recorded (ids older than a window
-- before the newest event, or before now if that is earlier, are not kept)
if nids > 0 then
  local cutoff = math.min(maxts, now) - window
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
if ttl > 0 then
  for k = 1, #KEYS do
    if not blobs[k] then
      redis.call('EXPIRE', KEYS[k], ttl_s)
    end
  end
end
return 1
