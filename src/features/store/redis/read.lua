-- nextbest: read a customer group (customer + one session) in one call.
-- KEYS[1] customer hash (its name is the base of the group's other keys)
-- ARGV: session_id or '', session feature or '',
--       then four lists, each as a count followed by names:
--       customer recent, customer resettable, session recent, session resettable
-- Returns { {hash, {zsets}, {resettable hashes}}, session_id or false, {session group} }
local base = KEYS[1]
local pos = 3
local function list()
  local c = tonumber(ARGV[pos])
  local out = {}
  for j = 1, c do
    out[j] = ARGV[pos + j]
  end
  pos = pos + c + 1
  return out
end
local crec = list()
local cres = list()
local srec = list()
local sres = list()
local function group(k, rec, res)
  local zs = {}
  for j = 1, #rec do
    zs[j] = redis.call('ZRANGE', k .. ':r:' .. rec[j], 0, -1, 'REV', 'WITHSCORES')
  end
  local xs = {}
  for j = 1, #res do
    xs[j] = redis.call('HGETALL', k .. ':x:' .. res[j])
  end
  return { redis.call('HGETALL', k), zs, xs }
end
local c = group(base, crec, cres)
local sid = ARGV[1]
if sid == '' and ARGV[2] ~= '' then
  sid = redis.call('HGET', base, ARGV[2]) or ''
end
if sid == '' then
  return { c, false, { {}, {}, {} } }
end
-- the session id escaped as keys.rs `session_key` does
local esc = string.gsub(string.gsub(sid, '%%', '%%25'), ':', '%%3A')
return { c, sid, group(base .. ':s:' .. esc, srec, sres) }
