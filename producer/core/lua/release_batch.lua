--- KEYS: batch batch_jobs batch_counts batch_claims legacy_claims lane batch_lane status_counts expiring_queued job_index tenant_index ledger policy ledger_tenants ledger_totals batch_usage
--- ARGV: job_prefix now_iso batch_member ttl_ms idem_prefix expiring_prefix tenant
--- uses: redis_now ledger
-- Release a staged batch, all of it at once: every job's schedule entry (in `lane`), its keys
-- made permanent (until they end), the batch sealed. Done once; a retry finds it released. A
-- batch whose every item was deduplicated ends here (its webhook due in batch_lane). A job
-- cancelled while staged (rare: `ended` is above 0) keeps its expiry, and so does its
-- idempotency claim: only then are records read. A staged job whose claim another job took
-- meanwhile (staged_holder: the first job of a key that runs owns it) is dropped, its record
-- and its counts with it, and its item listed under `dedup:<index>`, as if the key had been
-- held when it was written. batch_claims is the hash stage_batch writes; legacy_claims, the
-- list of claim keys an older producer wrote. A released job's record no longer expires: its
-- count moves from expiring_queued (stage_batch) to the status counts.
-- Money: the staged jobs' estimates (stage_batch's `reserve_micros`, less those of the jobs
-- dropped here) are reserved against the tenant's budget (ledger, policy) for the whole batch
-- at once. A batch that would pass the budget is not released but undone (every key of it
-- removed, as if never written; a job cancelled while staged gives back what its end
-- released) and the refusal's facts returned: {reason, budget, spent, reserved, period,
-- requested}.
local batch, jobs, counts = KEY.batch, KEY.batch_jobs, KEY.batch_counts
if redis.call('HGET', batch, 'state') ~= 'staging' then return 0 end
local function micros_of(value)
  return math.floor((tonumber(value) or 0) * 1000000 + 0.5)
end
-- What the dropped jobs hold, and what those of them that ended while staged released.
local dropped_reserve, dropped_released = 0, 0
local kept, staged = {}, redis.call('HGETALL', KEY.batch_claims)
for i = 1, #staged, 2 do
  local claim = staged[i]
  local index, id = string.match(staged[i + 1], '^(%d+) (.+)$')
  local holder = redis.call('GET', claim)
  if holder and holder ~= id then
    local key = ARG.job_prefix .. id
    local ok, record = pcall(cjson.decode, redis.call('GET', key) or 'null')
    local status = 'queued'
    if ok and type(record) == 'table' and type(record.status) == 'string' then
      status = record.status  -- cancelled, if it was while staged
      if type(record.cost) == 'table' then
        dropped_reserve = dropped_reserve + micros_of(record.cost.reserved_usd)
      end
      if status ~= 'queued' and type(record.billing) == 'table' then
        dropped_released = dropped_released + micros_of(record.billing.estimate_usd)
      end
    end
    redis.call('DEL', key)
    redis.call('LREM', jobs, 1, id)
    redis.call('ZREM', KEY.job_index, id)
    redis.call('ZREM', KEY.tenant_index, id)
    redis.call('HINCRBY', batch, 'total', -1)
    if status ~= 'queued' then redis.call('HINCRBY', batch, 'ended', -1) end
    redis.call('HINCRBY', counts, status, -1)
    if redis.call('ZREM', ARG.expiring_prefix .. status, id) == 0 and status == 'queued' then
      redis.call('HINCRBY', KEY.status_counts, status, -1)  -- staged before expiring sets
    end
    redis.call('HSET', batch, 'dedup:' .. index, holder)
  else
    kept[#kept + 1] = claim
  end
end
for _, claim in ipairs(redis.call('LRANGE', KEY.legacy_claims, 0, -1)) do
  kept[#kept + 1] = claim
end
local ids = redis.call('LRANGE', jobs, 0, -1)
local reserve = tonumber(redis.call('HGET', batch, 'reserve_micros') or '0') - dropped_reserve
local priced = tonumber(redis.call('HGET', batch, 'unpriced') or '0') == 0
local refused = ledger_refusal(KEY.ledger, KEY.policy, reserve, priced)
if refused then
  local give_back = dropped_released
  for _, id in ipairs(ids) do
    local key = ARG.job_prefix .. id
    local ok, record = pcall(cjson.decode, redis.call('GET', key) or 'null')
    local status = 'queued'
    if ok and type(record) == 'table' and type(record.status) == 'string' then
      status = record.status
      if status ~= 'queued' and type(record.billing) == 'table' then
        give_back = give_back + micros_of(record.billing.estimate_usd)
      end
    end
    redis.call('DEL', key)
    redis.call('ZREM', KEY.job_index, id)
    redis.call('ZREM', KEY.tenant_index, id)
    redis.call('ZREM', ARG.expiring_prefix .. status, id)
  end
  for i = 1, #staged, 2 do
    local id = string.match(staged[i + 1], '^%d+ (.+)$')
    if redis.call('GET', staged[i]) == id then redis.call('DEL', staged[i]) end
  end
  ledger_move(KEY.ledger, KEY.ledger_tenants, KEY.ledger_totals, ARG.tenant, give_back, 0, '')
  redis.call('DEL', batch, jobs, counts, KEY.batch_claims, KEY.legacy_claims, KEY.batch_usage)
  refused[#refused + 1] = reserve
  return refused
end
ledger_move(KEY.ledger, KEY.ledger_tenants, KEY.ledger_totals, ARG.tenant, reserve, 0, '')
local some_ended = tonumber(redis.call('HGET', batch, 'ended') or '0') > 0
local entries, ended_claims, persisted = {}, {}, 0
for _, id in ipairs(ids) do
  local key, running = ARG.job_prefix .. id, true
  if some_ended then
    local ok, record = pcall(cjson.decode, redis.call('GET', key) or '{}')
    if ok and (record.status == 'cancelled' or record.status == 'failed'
               or record.status == 'completed') then
      running = false
      local idem = type(record.request) == 'table' and record.request.idempotency_key
      if type(idem) == 'string' then ended_claims[ARG.idem_prefix .. idem] = true end
    end
  end
  if running then
    redis.call('PERSIST', key)
    persisted = persisted + redis.call('ZREM', KEY.expiring_queued, id)
  end
  entries[#entries + 1] = now
  entries[#entries + 1] = id
end
for j = 1, #entries, 2000 do
  redis.call('ZADD', KEY.lane, unpack(entries, j, math.min(j + 1999, #entries)))
end
for _, key in ipairs(kept) do
  if not ended_claims[key] then redis.call('PERSIST', key) end
end
redis.call('HINCRBY', KEY.status_counts, 'queued', persisted)
redis.call('DEL', KEY.batch_claims, KEY.legacy_claims)
for _, key in ipairs({batch, jobs, counts}) do redis.call('PERSIST', key) end
redis.call('HSET', batch, 'state', 'released', 'sealed', '1')
if tonumber(redis.call('HGET', batch, 'ended')) >= tonumber(redis.call('HGET', batch, 'total'))
    and redis.call('HSETNX', batch, 'finished_at', ARG.now_iso) == 1 then
  for _, key in ipairs({batch, jobs, counts}) do
    redis.call('PEXPIREAT', key, math.floor(now * 1000) + tonumber(ARG.ttl_ms))
  end
  if redis.call('HGET', batch, 'webhook_url') then
    redis.call('ZADD', KEY.batch_lane, now, ARG.batch_member)
  end
end
return #ids
