-- A claim's view of the providers' limits (claim.lua, claim_submit.lua): per configured
-- provider i, KEY.provider_keys[i] (.slots, .bucket: '' none in this lane) and ARG.providers[i]
-- (.name, .cap, .rate, .burst). Tokens and free slots are counted per account (the keys),
-- never per entry, so entries sharing a key share them; `spent` buckets are written back by
-- save_tokens().
local n = #ARG.providers
local index, tokens, spent, free = {}, {}, {}, {}
for i = 1, n do index[ARG.providers[i].name] = i end
local function slots(i) return KEY.provider_keys[i].slots end
local function bucket(i) return KEY.provider_keys[i].bucket end
local function has_token(i)
  local b = bucket(i)
  if b == '' then return true end
  if tokens[b] == nil then
    local rate, burst = tonumber(ARG.providers[i].rate), tonumber(ARG.providers[i].burst)
    local left = tonumber(redis.call('HGET', b, 'tokens') or burst)
    local since = tonumber(redis.call('HGET', b, 'ts') or now)
    tokens[b] = math.min(burst, left + math.max(0, now - since) * rate)
  end
  return tokens[b] >= 1
end
-- Whether provider i has a free slot beyond `keep` (slots held back for others).
local function has_slot(i, keep)
  local s = slots(i)
  if s == '' then return true end
  if free[s] == nil then
    -- A slot taken for a submit is held under the claim's lease (extended while the submit
    -- runs, pushed far ahead once the provider has the job): a dead claim's slot frees itself.
    -- One taken for a poll (a job retried into polling) is held for the generation.
    redis.call('ZREMRANGEBYSCORE', s, '-inf', now)
    free[s] = tonumber(ARG.providers[i].cap) - redis.call('ZCARD', s)
  end
  return free[s] > (keep or 0)
end
local function holds_slot(i, m)
  return slots(i) ~= '' and redis.call('ZSCORE', slots(i), m)
end
local function take(i, m, until_)
  local b, s = bucket(i), slots(i)
  if b ~= '' then
    tokens[b] = tokens[b] - 1
    spent[b] = true
  end
  if s ~= '' then
    if redis.call('ZSCORE', s, m) then
      redis.call('ZADD', s, 'GT', until_, m)
    else
      redis.call('ZADD', s, now + tonumber(ARG.hold_s), m)
      free[s] = free[s] - 1
    end
  end
end
local function save_tokens()
  for b in pairs(spent) do
    redis.call('HSET', b, 'tokens', tostring(tokens[b]), 'ts', tostring(now))
    redis.call('EXPIRE', b, 3600)
  end
end
