--- KEYS: bucket
--- ARGV: rate_per_s burst
--- uses: redis_now token_bucket
-- One request of one API key against its token bucket (token_bucket.lua).
return take_token(KEY.bucket, ARG.rate_per_s, ARG.burst)
