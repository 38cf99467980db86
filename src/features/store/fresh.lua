-- nextbest: write the final state of an entity group that has never been
-- written (the common case of a first backfill): one RESTORE per key of a
-- payload built by the client (src/features/store/dump.rs). Only if none
-- of the group's keys exists; otherwise nothing is written and the caller
-- applies the merged updates with apply.lua instead (which dedupes and
-- merges with what is there).
-- KEYS: the group's keys (dedupe sorted set first)
-- ARGV: ttl_ms (0 = no expiry), then one payload per key, in KEYS order
-- Returns 1 when written, 0 when some key already existed.
for c = 1, #KEYS, 4000 do
  -- in slices of at most 4000 keys (Lua's stack limit for unpack)
  if redis.call('EXISTS', unpack(KEYS, c, math.min(c + 3999, #KEYS))) > 0 then
    return 0
  end
end
local ttl = ARGV[1]
for k = 1, #KEYS do
  redis.call('RESTORE', KEYS[k], ttl, ARGV[k + 1])
end
return 1
