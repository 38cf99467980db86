-- nextbest: file items' popularity (features/store/popularity.rs; this is
-- its `Book::file`, keep the two in step). All keys share one hash tag, so
-- one cluster slot: KEYS[1] is the tag's base P (never written itself);
-- P:g:<b> (zset) the global list of bucket b, P:c:<b>:<category> (zset) a
-- category's, P:k:<b> (set) the categories of bucket b, P:f (hash) item ->
-- "<category time>\t<newest bucket>\t<category>" it is filed under, P:fb
-- (zset) item -> that newest bucket (to forget records that left the window).
-- ARGV: cut (the newest bucket a read at the writer's now no longer sees),
--       keep_global, keep_category, ttl_ms, buckets_per_window, then per
--       item: id, category ('' for none), category time, n, n (bucket, total).
-- A bucket keeps the greatest total filed for an item (ZADD GT); each list
-- touched is cut to its best once, at the end.
local P = KEYS[1]
local cut = tonumber(ARGV[1])
local keep_g = tonumber(ARGV[2])
local keep_c = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local nbuckets = tonumber(ARGV[5])
local rec, recb = P .. ':f', P .. ':fb'

local touched = {} -- key -> how many to keep (0: a set, not cut)
local function kkey(b)
  return P .. ':k:' .. b
end
local function ckey(b, cat)
  return P .. ':c:' .. b .. ':' .. cat
end
local function add(key, keep, s, item)
  redis.call('ZADD', key, 'GT', s, item)
  touched[key] = keep
end
local function add_category(b, cat, s, item)
  add(ckey(b, cat), keep_c, s, item)
  local kk = kkey(b)
  redis.call('SADD', kk, cat)
  touched[kk] = 0
end

-- records whose newest bucket left the window are forgotten
local old = redis.call('ZRANGEBYSCORE', recb, '-inf', cut, 'LIMIT', 0, 1000)
if #old > 0 then
  redis.call('HDEL', rec, unpack(old))
  redis.call('ZREM', recb, unpack(old))
end

-- the item's record (time string, time, newest bucket, category), or nil
local function record(item)
  local v = redis.call('HGET', rec, item)
  if not v then
    return nil
  end
  local a = string.find(v, '\t', 1, true)
  local b = string.find(v, '\t', a + 1, true)
  local newest = tonumber(string.sub(v, a + 1, b - 1))
  if newest <= cut then
    return nil
  end
  local tss = string.sub(v, 1, a - 1)
  return tss, tonumber(tss), newest, string.sub(v, b + 1)
end

local i = 6
while i <= #ARGV do
  local item, cat, tss = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ts = tonumber(tss)
  local n = tonumber(ARGV[i + 3])
  if cat == '' then
    for j = 0, n - 1 do
      local bs, s = ARGV[i + 4 + 2 * j], tonumber(ARGV[i + 5 + 2 * j])
      if tonumber(bs) > cut and s > 0 then
        add(P .. ':g:' .. bs, keep_g, s, item)
      end
    end
  else
    local pss, pts, newest, pcat = record(item)
    local fcat, fss = cat, tss
    if pts and ts < pts then
      -- a newer category is recorded: file under it
      fcat, fss = pcat, pss
    elseif pts and pcat ~= cat then
      -- a newer category than the record's: every live bucket moves
      for b = cut + 1, cut + nbuckets do
        local bs = string.format('%d', b)
        local ok = ckey(bs, pcat)
        local s = redis.call('ZSCORE', ok, item)
        if s then
          redis.call('ZREM', ok, item)
          if redis.call('EXISTS', ok) == 0 then
            redis.call('SREM', kkey(bs), pcat)
          end
          add_category(bs, cat, s, item)
        end
      end
    end
    for j = 0, n - 1 do
      local bs, s = ARGV[i + 4 + 2 * j], tonumber(ARGV[i + 5 + 2 * j])
      local b = tonumber(bs)
      if b > cut and s > 0 then
        add(P .. ':g:' .. bs, keep_g, s, item)
        add_category(bs, fcat, s, item)
        if (not newest) or b > newest then
          newest = b
        end
      end
    end
    if newest then
      redis.call('HSET', rec, item, fss .. '\t' .. string.format('%d', newest) .. '\t' .. fcat)
      redis.call('ZADD', recb, newest, item)
    end
  end
  i = i + 4 + 2 * n
end
for key, keep in pairs(touched) do
  if keep > 0 then
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
  end
  redis.call('PEXPIRE', key, ttl)
end
redis.call('PEXPIRE', rec, ttl)
redis.call('PEXPIRE', recb, ttl)
return 1
