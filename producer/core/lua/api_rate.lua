--- KEYS: bucket
--- ARGV: rate_per_s burst
--- uses: redis_now
-- One request of one API key, against its token bucket, refilled by Redis's clock (the same
-- for every replica of the HTTP service) at rate_per_s up to burst. Returns '0' when the
-- request may go (a token spent), else the seconds until a token is back (Retry-After); a
-- refused request spends nothing. Strings, because Redis would cut a Lua number to an
-- integer. The bucket expires once it would be full again: an idle key leaves nothing.
local rate, burst = tonumber(ARG.rate_per_s), tonumber(ARG.burst)
local tokens = tonumber(redis.call('HGET', KEY.bucket, 'tokens') or burst)
local since = tonumber(redis.call('HGET', KEY.bucket, 'at') or now)
tokens = math.min(burst, tokens + math.max(0, now - since) * rate)
if tokens < 1 then return string.format('%.6f', (1 - tokens) / rate) end
tokens = tokens - 1
redis.call('HSET', KEY.bucket, 'tokens', string.format('%.6f', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEY.bucket, math.ceil((burst - tokens) / rate * 1000) + 1000)
return '0'
