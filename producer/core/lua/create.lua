--- KEYS: claim job lane status_counts job_index tenant_index ledger policy ledger_tenants ledger_totals
--- ARGV: job_id record retention_s job_prefix batch_prefix tenant reserve priced
--- uses: redis_now staged_holder ledger
-- Record, idempotency claim and schedule entry land together or not at all, so a crash can
-- neither lose an accepted job nor leave an entry without its record. An existing claim on
-- the idempotency key (claim: '' without one) wins, unless a staged job holds it
-- (staged_holder): the caller gets the job that holds it. The job also enters the status
-- counts, the job index and its tenant's (tenant_index), which forget jobs older than the
-- records' retention, so they stay bounded. Its estimated cost (`reserve` micro-dollars;
-- `priced` '' when some provider it may go to has no price) is reserved against its tenant's
-- budget (ledger, policy) in the same step, or the job is refused and nothing is written:
-- the refusal's facts are returned instead of an id.
if KEY.claim ~= '' then
  local held = redis.call('GET', KEY.claim)
  if held and not staged(ARG.job_prefix, ARG.batch_prefix, held, '') then return held end
end
local refused = ledger_refusal(KEY.ledger, KEY.policy, tonumber(ARG.reserve), ARG.priced ~= '')
if refused then return refused end
ledger_move(KEY.ledger, KEY.ledger_tenants, KEY.ledger_totals, ARG.tenant, ARG.reserve, 0, '')
if KEY.claim ~= '' then redis.call('SET', KEY.claim, ARG.job_id) end
redis.call('SET', KEY.job, ARG.record)
redis.call('ZADD', KEY.lane, now, ARG.job_id)
redis.call('HINCRBY', KEY.status_counts, 'queued', 1)
redis.call('ZADD', KEY.job_index, now, ARG.job_id)
redis.call('ZREMRANGEBYSCORE', KEY.job_index, '-inf', now - tonumber(ARG.retention_s))
redis.call('ZADD', KEY.tenant_index, now, ARG.job_id)
redis.call('ZREMRANGEBYSCORE', KEY.tenant_index, '-inf', now - tonumber(ARG.retention_s))
return ARG.job_id
