-- One request against a token bucket (a hash: tokens, at), refilled by Redis's clock (the
-- same for every replica of the HTTP service) at rate_per_s up to burst. Returns '0' when
-- the request may go (a token spent), else the seconds until a token is back (Retry-After);
-- a refused request spends nothing. Strings, because Redis would cut a Lua number to an
-- integer. The bucket expires once it would be full again: an idle key leaves nothing.
local function take_token(bucket, rate_per_s, burst)
  local rate, cap = tonumber(rate_per_s), tonumber(burst)
  local tokens = tonumber(redis.call('HGET', bucket, 'tokens') or cap)
  local since = tonumber(redis.call('HGET', bucket, 'at') or now)
  tokens = math.min(cap, tokens + math.max(0, now - since) * rate)
  if tokens < 1 then return string.format('%.6f', (1 - tokens) / rate) end
  tokens = tokens - 1
  redis.call('HSET', bucket, 'tokens', string.format('%.6f', tokens),
             'at', string.format('%.6f', now))
  redis.call('PEXPIRE', bucket, math.ceil((cap - tokens) / rate * 1000) + 1000)
  return '0'
end
