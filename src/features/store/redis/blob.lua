-- nextbest: (re)build an item's blob from its hash (`keys::blob_key`), as
-- `update.lua`'s `B` op does, keeping the hash's expiry. Used once per item
-- when a store written before blobs existed is first opened (`blobs`).
-- KEYS[1] the item hash, KEYS[2] its blob. Returns 1 when a blob was written.
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('SET', KEYS[2], cmsgpack.pack(all))
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
return 1
