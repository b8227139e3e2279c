--- KEYS: claim
--- ARGV: job_id expire_at_ms
-- An ended job's idempotency claim expires with its records, if it is still the job's: a
-- staged job's claim may have been taken over (staged_holder) by a job that runs on.
if redis.call('GET', KEY.claim) == ARG.job_id then
  redis.call('PEXPIREAT', KEY.claim, ARG.expire_at_ms)
end
