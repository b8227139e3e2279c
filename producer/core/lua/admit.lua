--- KEYS: hashes
--- ARGV: digest bucket_head bucket_tail rate_per_s burst
--- uses: redis_now token_bucket
-- A request of the HTTP API in one round trip: who the key with this secret's sha256 is (its
-- JSON in `hashes`; '' for no live key) and, for a live key, one token of its bucket
-- (bucket_head .. key id .. bucket_tail; token_bucket.lua): {who, wait_s}.
local who = redis.call('HGET', KEY.hashes, ARG.digest)
if not who then return {'', '0'} end
local bucket = ARG.bucket_head .. cjson.decode(who).key_id .. ARG.bucket_tail
return {who, take_token(bucket, ARG.rate_per_s, ARG.burst)}
