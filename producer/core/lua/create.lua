--- KEYS: claim job lane status_counts job_index tenant_index
--- ARGV: job_id record retention_s job_prefix batch_prefix
--- uses: redis_now staged_holder
-- Record, idempotency claim and schedule entry land together or not at all, so a crash can
-- neither lose an accepted job nor leave an entry without its record. An existing claim on
-- the idempotency key (claim: '' without one) wins, unless a staged job holds it
-- (staged_holder): the caller gets the job that holds it. The job also enters the status
-- counts, the job index and its tenant's (tenant_index), which forget jobs older than the
-- records' retention, so they stay bounded.
if KEY.claim ~= '' then
  local held = redis.call('GET', KEY.claim)
  if held and not staged(ARG.job_prefix, ARG.batch_prefix, held, '') then return held end
  redis.call('SET', KEY.claim, ARG.job_id)
end
redis.call('SET', KEY.job, ARG.record)
redis.call('ZADD', KEY.lane, now, ARG.job_id)
redis.call('HINCRBY', KEY.status_counts, 'queued', 1)
redis.call('ZADD', KEY.job_index, now, ARG.job_id)
redis.call('ZREMRANGEBYSCORE', KEY.job_index, '-inf', now - tonumber(ARG.retention_s))
redis.call('ZADD', KEY.tenant_index, now, ARG.job_id)
redis.call('ZREMRANGEBYSCORE', KEY.tenant_index, '-inf', now - tonumber(ARG.retention_s))
return ARG.job_id
