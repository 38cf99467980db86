-- nextbest: file items' popularity (features/store/popularity.rs; this is
-- its `Book::file`, keep the two in step). All keys share one hash tag, so
-- one cluster slot: KEYS[1] is the tag's base P (never written itself);
-- P:g:<b> (zset) the global list of bucket b, P:c:<b>:<category> (zset) a
-- category's, P:k:<b> (set) the categories of bucket b, P:i:<b> (hash)
-- item -> "<category time>\t<category>" it is filed under in bucket b.
-- ARGV: cut (the newest bucket a read at the writer's now no longer sees),
--       keep_global, keep_category, ttl_ms, buckets_per_window, then per
--       item: id, category ('' for none), category time, n, n (bucket, total).
-- A bucket keeps the greatest total filed for an item (ZADD GT); an item
-- filed with a newer category than a live bucket holds moves there first.
local P = KEYS[1]
local cut = tonumber(ARGV[1])
local keep_g = tonumber(ARGV[2])
local keep_c = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local nbuckets = tonumber(ARGV[5])

local function ikey(b)
  return P .. ':i:' .. b
end
local function kkey(b)
  return P .. ':k:' .. b
end
local function ckey(b, cat)
  return P .. ':c:' .. b .. ':' .. cat
end

-- drops the lowest members past `keep`; returns them (or nil)
local function trim(key, keep)
  local n = redis.call('ZCARD', key)
  if n <= keep then
    return nil
  end
  local gone = redis.call('ZRANGE', key, 0, n - keep - 1)
  redis.call('ZREMRANGEBYRANK', key, 0, n - keep - 1)
  return gone
end

local function add_category(b, cat, ts, item, s)
  local ck, ik, kk = ckey(b, cat), ikey(b), kkey(b)
  redis.call('ZADD', ck, 'GT', s, item)
  redis.call('HSET', ik, item, ts .. '\t' .. cat)
  redis.call('SADD', kk, cat)
  local gone = trim(ck, keep_c)
  if gone then
    for c = 1, #gone, 500 do
      redis.call('HDEL', ik, unpack(gone, c, math.min(c + 499, #gone)))
    end
  end
  redis.call('PEXPIRE', ck, ttl)
  redis.call('PEXPIRE', ik, ttl)
  redis.call('PEXPIRE', kk, ttl)
end

-- the (time string, time, category) item is filed under in bucket b, or nil
local function filed(b, item)
  local v = redis.call('HGET', ikey(b), item)
  if not v then
    return nil
  end
  local tab = string.find(v, '\t', 1, true)
  local ts = string.sub(v, 1, tab - 1)
  return ts, tonumber(ts), string.sub(v, tab + 1)
end

local function recategorise(b, item, cat, tss, ts)
  local _, pts, pcat = filed(b, item)
  if (not pts) or pcat == cat or ts < pts then
    return
  end
  local old = ckey(b, pcat)
  local s = redis.call('ZSCORE', old, item)
  redis.call('ZREM', old, item)
  if redis.call('ZCARD', old) == 0 then
    redis.call('SREM', kkey(b), pcat)
  end
  if s then
    add_category(b, cat, tss, item, s)
  else
    redis.call('HSET', ikey(b), item, tss .. '\t' .. cat)
  end
end

local i = 6
while i <= #ARGV do
  local item, cat, tss = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ts = tonumber(tss)
  local n = tonumber(ARGV[i + 3])
  if cat ~= '' then
    for b = cut + 1, cut + nbuckets do
      recategorise(string.format('%d', b), item, cat, tss, ts)
    end
  end
  for j = 0, n - 1 do
    local bs = ARGV[i + 4 + 2 * j]
    local s = tonumber(ARGV[i + 5 + 2 * j])
    if tonumber(bs) > cut and s > 0 then
      local gk = P .. ':g:' .. bs
      redis.call('ZADD', gk, 'GT', s, item)
      trim(gk, keep_g)
      redis.call('PEXPIRE', gk, ttl)
      if cat ~= '' then
        -- a newer category than this filing's is kept
        local c, t = cat, tss
        local pss, pts, pcat = filed(bs, item)
        if pts and pcat ~= cat and ts < pts then
          c, t = pcat, pss
        end
        add_category(bs, c, t, item, s)
      end
    end
  end
  i = i + 4 + 2 * n
end
return 1
