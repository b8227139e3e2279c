--- KEYS: batch batch_lane batch_jobs batch_counts batch_usage
--- ARGV: batch_member now_iso expire_at_ms
--- uses: redis_now
-- One of a batch's jobs ended. Exactly one caller sees the last job end (HINCRBY is atomic,
-- and HSETNX guards the seal race), and only that caller schedules the batch.completed
-- webhook (in batch_lane), inside the same transaction as the job's own transition: nothing
-- in between to crash in. The batch's keys (its usage too) then expire with that job's record.
local ended = redis.call('HINCRBY', KEY.batch, 'ended', 1)
if redis.call('HGET', KEY.batch, 'sealed') == '1'
    and ended >= tonumber(redis.call('HGET', KEY.batch, 'total'))
    and redis.call('HSETNX', KEY.batch, 'finished_at', ARG.now_iso) == 1 then
  for _, key in ipairs({KEY.batch, KEY.batch_jobs, KEY.batch_counts, KEY.batch_usage}) do
    redis.call('PEXPIREAT', key, ARG.expire_at_ms)
  end
  if redis.call('HGET', KEY.batch, 'webhook_url') then
    redis.call('ZADD', KEY.batch_lane, now, ARG.batch_member)
  end
end
return ended
