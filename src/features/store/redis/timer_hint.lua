-- nextbest: write a trigger timer's deadline index entry (one shard, one slot).
-- KEYS[1] the shard's sorted set, KEYS[2] its gen hash
-- ARGV: deadline, member
-- The score never moves later (LT; a new member is added): the entry is due no later than any
-- deadline written for the member, and the gen counts writes so that a
-- claimer settling it knows whether it was written since its claim.
redis.call('ZADD', KEYS[1], 'LT', ARGV[1], ARGV[2])
return redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
