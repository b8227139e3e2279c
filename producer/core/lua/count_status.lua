--- KEYS: status_counts expiring_before expiring_after
--- ARGV: job_id before before_ended expire_at_ms after
--- uses: redis_now
-- A job moved from status `before` to `after`: its count moves with it, in the transaction of
-- the move. A job whose record expires (ended, or staged in a batch not released) is counted
-- in its status's expiring set under its record's expiry (expire_at_ms; '' for a record that
-- does not expire), where it stops counting when the record goes; the others in the hash.
-- An ended job's count before the expiring sets existed is left to lapse (before_ended '1'):
-- the counts of ended jobs are read from the expiring sets alone.
if redis.call('ZREM', KEY.expiring_before, ARG.job_id) == 0 and ARG.before_ended ~= '1' then
  redis.call('HINCRBY', KEY.status_counts, ARG.before, -1)
end
if ARG.expire_at_ms ~= '' then
  redis.call('ZADD', KEY.expiring_after, ARG.expire_at_ms, ARG.job_id)
  redis.call('ZREMRANGEBYSCORE', KEY.expiring_after, '-inf', math.floor(now * 1000))
else
  redis.call('HINCRBY', KEY.status_counts, ARG.after, 1)
end
