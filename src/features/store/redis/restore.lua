-- nextbest: write the final state of an entity group that has never been
-- written (the common case of a first backfill): one RESTORE per key of a
-- payload built by the client (src/features/store/dump.rs). Only if none
-- of the group's keys exists; otherwise nothing is written and the caller
-- applies the merged updates with update.lua instead (which dedupes and
-- merges with what is there).
--
-- RESTORE without REPLACE refuses a key that exists (BUSYKEY), so the
-- restores themselves are the existence check, with no EXISTS beforehand
-- (one command per key fewer; no faster overall, RESTORE's own lookup then
-- pays the cache misses EXISTS paid: benches/RESULTS.md). On any refusal,
-- also of a corrupt payload, the keys this call restored are deleted
-- again: they did not exist before it, so the group is left as it was. The dedupe set comes first, and every
-- streamed event adds to it, so a group already written is refused at its
-- first key, before anything needs undoing.
--
-- KEYS: the group's keys (dedupe sorted set first)
-- ARGV: ttl_ms (0 = no expiry), then one payload per key, in KEYS order
-- Returns 1 when written, 0 when some key already existed.
local ttl = ARGV[1]
for k = 1, #KEYS do
  local r = redis.pcall('RESTORE', KEYS[k], ttl, ARGV[k + 1])
  if type(r) == 'table' and r.err then
    -- undo, in slices of at most 4000 keys (Lua's stack limit for unpack)
    for c = 1, k - 1, 4000 do
      redis.call('DEL', unpack(KEYS, c, math.min(c + 3999, k - 1)))
    end
    if string.sub(r.err, 1, 7) == 'BUSYKEY' then
      return 0
    end
    return redis.error_reply(r.err)
  end
end
return 1
