--- KEYS: batch batch_jobs batch_counts batch_claims expiring_queued job_index tenant_index
--- ARGV: idem_prefix job_prefix first_index now_iso ttl_ms batch_prefix tenant batch_fields jobs[id idempotency_key record reserve priced]
--- uses: redis_now staged_holder
-- A chunk of a batch in one atomic step, staged: records, idempotency claims and the batch's
-- bookkeeping, but no schedule entries, so nothing of it runs until release_batch releases
-- the whole batch. Staged keys expire after the record TTL unless released (a producer that
-- died and was never retried leaves nothing behind for good). `staged` counts the requests
-- written, so a retry resumes after the last whole chunk. Job and idempotency keys are built
-- from prefixes inside the script (one key per job would not fit in KEYS for 10,000 jobs);
-- videoqueue needs one Redis, not a cluster. Each caller string travels as its own argument,
-- never joined with a separator, so no byte a caller chooses can change where one value
-- ends. batch_claims (a hash: claim key -> "<request index> <job id>") is for release_batch.
-- Staged jobs are listed in the job index (and their tenant's, tenant_index) and counted as queued while their records exist
-- (expiring_queued, under their records' expiry: release_batch moves them to the counts). An
-- item whose idempotency key an earlier job holds gets no job: `dedup:<index>` names it; a
-- claim of another batch's staged job is taken over (staged_holder). A batch belongs to the
-- tenant that staged it first (one before tenants, with a state but no tenant, to the default
-- one): another tenant's chunk writes nothing and gets -1. The written jobs' estimates
-- (`reserve` micro-dollars; `priced` '' for one some provider has no price for) are summed in
-- the batch's `reserve_micros` (and counted in `unpriced`): release_batch reserves them, the
-- whole batch at once, so a producer that dies while staging holds no money.
local batch, first_index, ttl_ms = KEY.batch, tonumber(ARG.first_index), tonumber(ARG.ttl_ms)
local owner = redis.call('HGET', batch, 'tenant')
if not owner and redis.call('HGET', batch, 'state') then owner = 'default' end
if owner and owner ~= ARG.tenant then return -1 end
-- The batch's own fields (a JSON object, '' for none) only once the owner is known: another
-- tenant racing to the same new id must not leave its webhook or metadata on this batch.
if ARG.batch_fields ~= '' then
  for field, value in pairs(cjson.decode(ARG.batch_fields)) do
    redis.call('HSET', batch, field, value)
  end
end
if redis.call('HGET', batch, 'state') == 'released'
    or tonumber(redis.call('HGET', batch, 'staged') or '0') > first_index then
  return 0  -- written already (a retry racing its first run)
end
local ids, reserve, unpriced = {}, 0, 0
for k, job in ipairs(ARG.jobs) do
  local id, idem = job.id, job.idempotency_key
  local index = first_index + k - 1
  local earlier = false
  if idem ~= '' then
    earlier = redis.call('GET', ARG.idem_prefix .. idem)
    if earlier and staged(ARG.job_prefix, ARG.batch_prefix, earlier, batch) then
      earlier = false
    end
    if not earlier then
      redis.call('SET', ARG.idem_prefix .. idem, id, 'PX', ttl_ms)
      redis.call('HSET', KEY.batch_claims, ARG.idem_prefix .. idem, index .. ' ' .. id)
    end
  end
  if earlier then
    redis.call('HSET', batch, 'dedup:' .. index, earlier)
  else
    redis.call('SET', ARG.job_prefix .. id, job.record, 'PX', ttl_ms)
    ids[#ids + 1] = id
    reserve = reserve + tonumber(job.reserve)
    if job.priced == '' then unpriced = unpriced + 1 end
  end
end
for j = 1, #ids, 1000 do
  redis.call('RPUSH', KEY.batch_jobs, unpack(ids, j, math.min(j + 999, #ids)))
end
redis.call('HSETNX', batch, 'created_at', ARG.now_iso)
redis.call('HSET', batch, 'state', 'staging', 'staged', first_index + #ARG.jobs,
           'tenant', ARG.tenant)
redis.call('HINCRBY', batch, 'total', #ids)
redis.call('HINCRBY', batch, 'ended', 0)
redis.call('HINCRBY', batch, 'reserve_micros', string.format('%d', reserve))
redis.call('HINCRBY', batch, 'unpriced', unpriced)
redis.call('HINCRBY', KEY.batch_counts, 'queued', #ids)
local now_ms = math.floor(now * 1000)
for j = 1, #ids, 1000 do
  local entries, expiring = {}, {}
  for k = j, math.min(j + 999, #ids) do
    entries[#entries + 1] = now
    entries[#entries + 1] = ids[k]
    expiring[#expiring + 1] = now_ms + ttl_ms
    expiring[#expiring + 1] = ids[k]
  end
  redis.call('ZADD', KEY.job_index, unpack(entries))
  redis.call('ZADD', KEY.tenant_index, unpack(entries))
  redis.call('ZADD', KEY.expiring_queued, unpack(expiring))
end
redis.call('ZREMRANGEBYSCORE', KEY.job_index, '-inf', now - ttl_ms / 1000)
redis.call('ZREMRANGEBYSCORE', KEY.tenant_index, '-inf', now - ttl_ms / 1000)
redis.call('ZREMRANGEBYSCORE', KEY.expiring_queued, '-inf', now_ms)
for _, key in ipairs({batch, KEY.batch_jobs, KEY.batch_counts, KEY.batch_claims}) do
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl_ms) end
end
return 1
