-- nextbest: one popularity list at a reader's now (features/store/popularity.rs,
-- its `Book::popular`; keep the two in step). KEYS[1] is the tag's base P
-- (see pop_write.lua). ARGV: lo, hi (the live buckets), top, category
-- ('' for the global list). One list a call, so no call holds the server
-- long (`redis/popular.rs` pipelines them).
-- Returns the members of the live buckets' union whose sum is at least
-- the top-th's (ties at the edge included; the caller orders and cuts),
-- flat (member, score).
local P = KEYS[1]
local lo, hi = tonumber(ARGV[1]), tonumber(ARGV[2])
local k = tonumber(ARGV[3])
local cat = ARGV[4]
if k <= 0 then
  return {}
end
local keys = {}
for b = lo, hi do
  local bs = string.format('%d', b)
  if cat == '' then
    keys[#keys + 1] = P .. ':g:' .. bs
  else
    keys[#keys + 1] = P .. ':c:' .. bs .. ':' .. cat
  end
end
local tmp = P .. ':tmp'
redis.call('ZUNIONSTORE', tmp, #keys, unpack(keys))
local n = redis.call('ZCARD', tmp)
local out
if n <= k then
  out = redis.call('ZRANGE', tmp, 0, -1, 'WITHSCORES')
else
  local kth = redis.call('ZRANGE', tmp, k - 1, k - 1, 'REV', 'WITHSCORES')[2]
  out = redis.call('ZRANGE', tmp, kth, '+inf', 'BYSCORE', 'WITHSCORES')
end
redis.call('DEL', tmp)
return out
