"""The Lua scripts the record store runs: each one atomic step on Redis (producer/core/store.py
calls them; their KEYS and ARGV are described above each)."""

from __future__ import annotations

from producer.core.schedule import REDIS_NOW

# A Lua function for the scripts that claim idempotency keys: whether the job holding a claim
# is staged, queued in a batch other than `except_batch` (a key) that its producer has not
# released. Such a job may never run (its producer died), so its claim does not hold against
# another job: the first job of a key that runs owns it, and RELEASE_BATCH drops a staged job
# whose claim was taken meanwhile (never two jobs of one key, never an id that will not run).
STAGED_HOLDER = """
local function staged(job_prefix, batch_prefix, id, except_batch)
  local ok, record = pcall(cjson.decode, redis.call('GET', job_prefix .. id) or 'null')
  if not ok or type(record) ~= 'table' or record.status ~= 'queued'
      or type(record.batch_id) ~= 'string' then
    return false
  end
  local batch = batch_prefix .. record.batch_id
  return batch ~= except_batch and redis.call('HGET', batch, 'state') == 'staging'
end
"""

# Record, idempotency claim and schedule entry land together or not at all, so a crash can
# neither lose an accepted job nor leave an entry without its record. An existing claim on
# the idempotency key wins, unless a staged job holds it (STAGED_HOLDER): the caller gets the
# job that holds it. The job also enters the status counts (KEYS[4]) and the job index
# (KEYS[5]), which forgets jobs older than the records' retention (ARGV[3], seconds), so it
# stays bounded. ARGV[4], ARGV[5]: the job-key and batch-key prefixes.
CREATE = (
    STAGED_HOLDER
    + """
if KEYS[1] ~= '' then
  local held = redis.call('GET', KEYS[1])
  if held and not staged(ARGV[4], ARGV[5], held, '') then return held end
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[2])
"""
    + REDIS_NOW
    + """
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[3]))
return ARGV[1]
"""
)

# An ended job's idempotency claim expires with its records (Unix ms), if it is still the
# job's: a staged job's claim may have been taken over (STAGED_HOLDER) by a job that runs on.
# KEYS: the claim. ARGV: the job id, when it expires.
EXPIRE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
"""

# A chunk of a batch in one atomic step, staged: records, idempotency claims and the batch's
# bookkeeping, but no schedule entries, so nothing of it runs until RELEASE_BATCH releases
# the whole batch. Staged keys expire after the record TTL unless released (a producer that
# died and was never retried leaves nothing behind for good). `staged` counts the requests
# written, so a retry resumes after the last whole chunk. Job and idempotency keys are built
# from prefixes inside the script (one key per job would not fit in KEYS for 10,000 jobs);
# videoqueue needs one Redis, not a cluster. ARGV: idempotency-key prefix, job-key prefix,
# index of the chunk's first request, now (ISO), the record TTL (ms), batch-key prefix, then
# three arguments per job: id, idempotency key or "", record JSON. Each caller string travels
# as its own argument, never joined with a separator, so no byte a caller chooses can change
# where one value ends. KEYS: batch, its job list, its counts, its staged claims (a hash:
# claim key -> "<request index> <job id>", for RELEASE_BATCH), the status counts, the job
# index (staged jobs are listed and counted as queued: their records exist). An item whose
# idempotency key an earlier job holds gets no job: `dedup:<index>` names it; a claim of
# another batch's staged job is taken over (STAGED_HOLDER).
STAGE_BATCH = (
    STAGED_HOLDER
    + REDIS_NOW
    + """
local batch, jobs, counts, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local idem_prefix, job_prefix, first_index = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ttl_ms, batch_prefix = tonumber(ARGV[5]), ARGV[6]
if redis.call('HGET', batch, 'state') == 'released'
    or tonumber(redis.call('HGET', batch, 'staged') or '0') > first_index then
  return 0  -- written already (a retry racing its first run)
end
local ids = {}
for i = 7, #ARGV, 3 do
  local id, idem, record = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local index = first_index + (i - 7) / 3
  local earlier = false
  if idem ~= '' then
    earlier = redis.call('GET', idem_prefix .. idem)
    if earlier and staged(job_prefix, batch_prefix, earlier, batch) then earlier = false end
    if not earlier then
      redis.call('SET', idem_prefix .. idem, id, 'PX', ttl_ms)
      redis.call('HSET', claims, idem_prefix .. idem, index .. ' ' .. id)
    end
  end
  if earlier then
    redis.call('HSET', batch, 'dedup:' .. index, earlier)
  else
    redis.call('SET', job_prefix .. id, record, 'PX', ttl_ms)
    ids[#ids + 1] = id
  end
end
for j = 1, #ids, 1000 do
  redis.call('RPUSH', jobs, unpack(ids, j, math.min(j + 999, #ids)))
end
redis.call('HSETNX', batch, 'created_at', ARGV[4])
redis.call('HSET', batch, 'state', 'staging', 'staged', first_index + (#ARGV - 6) / 3)
redis.call('HINCRBY', batch, 'total', #ids)
redis.call('HINCRBY', batch, 'ended', 0)
redis.call('HINCRBY', counts, 'queued', #ids)
redis.call('HINCRBY', KEYS[5], 'queued', #ids)
for j = 1, #ids, 1000 do
  local entries = {}
  for k = j, math.min(j + 999, #ids) do
    entries[#entries + 1] = now
    entries[#entries + 1] = ids[k]
  end
  redis.call('ZADD', KEYS[6], unpack(entries))
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - ttl_ms / 1000)
for _, key in ipairs({batch, jobs, counts, claims}) do
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl_ms) end
end
return 1
"""
)

# Release a staged batch, all of it at once: every job's schedule entry, its keys made
# permanent (until they end), the batch sealed. Done once; a retry finds it released. A batch
# whose every item was deduplicated ends here. A job cancelled while staged (rare: `ended` is
# above 0) keeps its expiry, and so does its idempotency claim: only then are records read.
# A staged job whose claim another job took meanwhile (STAGED_HOLDER: the first job of a key
# that runs owns it) is dropped, its record and its counts with it, and its item listed under
# `dedup:<index>`, as if the key had been held when it was written. KEYS: batch, its job list,
# its counts, its staged claims (the hash STAGE_BATCH writes), its staged claims as an older
# producer wrote them (a list of claim keys), the submit lane, the batch-webhook lane, the
# status counts, the job index. ARGV: job-key prefix, now (ISO), the batch's schedule member,
# the record TTL (ms), idempotency-key prefix.
RELEASE_BATCH = (
    REDIS_NOW
    + """
local batch, jobs, counts, claims, legacy = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('HGET', batch, 'state') ~= 'staging' then return 0 end
local kept, staged = {}, redis.call('HGETALL', claims)
for i = 1, #staged, 2 do
  local claim = staged[i]
  local index, id = string.match(staged[i + 1], '^(%d+) (.+)$')
  local holder = redis.call('GET', claim)
  if holder and holder ~= id then
    local key = ARGV[1] .. id
    local ok, record = pcall(cjson.decode, redis.call('GET', key) or 'null')
    local status = 'queued'
    if ok and type(record) == 'table' and type(record.status) == 'string' then
      status = record.status  -- cancelled, if it was while staged
    end
    redis.call('DEL', key)
    redis.call('LREM', jobs, 1, id)
    redis.call('ZREM', KEYS[9], id)
    redis.call('HINCRBY', batch, 'total', -1)
    if status ~= 'queued' then redis.call('HINCRBY', batch, 'ended', -1) end
    redis.call('HINCRBY', counts, status, -1)
    redis.call('HINCRBY', KEYS[8], status, -1)
    redis.call('HSET', batch, 'dedup:' .. index, holder)
  else
    kept[#kept + 1] = claim
  end
end
for _, claim in ipairs(redis.call('LRANGE', legacy, 0, -1)) do kept[#kept + 1] = claim end
local ids = redis.call('LRANGE', jobs, 0, -1)
local some_ended = tonumber(redis.call('HGET', batch, 'ended') or '0') > 0
local entries, ended_claims = {}, {}
for _, id in ipairs(ids) do
  local key, running = ARGV[1] .. id, true
  if some_ended then
    local ok, record = pcall(cjson.decode, redis.call('GET', key) or '{}')
    if ok and (record.status == 'cancelled' or record.status == 'failed'
               or record.status == 'completed') then
      running = false
      local idem = type(record.request) == 'table' and record.request.idempotency_key
      if type(idem) == 'string' then ended_claims[ARGV[5] .. idem] = true end
    end
  end
  if running then redis.call('PERSIST', key) end
  entries[#entries + 1] = now
  entries[#entries + 1] = id
end
for j = 1, #entries, 2000 do
  redis.call('ZADD', KEYS[6], unpack(entries, j, math.min(j + 1999, #entries)))
end
for _, key in ipairs(kept) do
  if not ended_claims[key] then redis.call('PERSIST', key) end
end
redis.call('DEL', claims, legacy)
for _, key in ipairs({batch, jobs, counts}) do redis.call('PERSIST', key) end
redis.call('HSET', batch, 'state', 'released', 'sealed', '1')
if tonumber(redis.call('HGET', batch, 'ended')) >= tonumber(redis.call('HGET', batch, 'total'))
    and redis.call('HSETNX', batch, 'finished_at', ARGV[2]) == 1 then
  for _, key in ipairs({batch, jobs, counts}) do
    redis.call('PEXPIREAT', key, math.floor(now * 1000) + tonumber(ARGV[4]))
  end
  if redis.call('HGET', batch, 'webhook_url') then
    redis.call('ZADD', KEYS[7], now, ARGV[3])
  end
end
return #ids
"""
)

# One of a batch's jobs ended. Exactly one caller sees the last job end (HINCRBY is atomic,
# and HSETNX guards the seal race), and only that caller schedules the batch.completed
# webhook, inside the same transaction as the job's own transition: nothing in between to
# crash in. The batch's keys then expire with that job's record. KEYS: the batch, the
# batch-webhook lane, the batch's job list, its counts. ARGV: the batch's schedule member,
# now (ISO), when the keys expire (Unix ms).
JOB_ENDED = (
    REDIS_NOW
    + """
local ended = redis.call('HINCRBY', KEYS[1], 'ended', 1)
if redis.call('HGET', KEYS[1], 'sealed') == '1'
    and ended >= tonumber(redis.call('HGET', KEYS[1], 'total'))
    and redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[2]) == 1 then
  for i = 1, 4 do
    if i ~= 2 then redis.call('PEXPIREAT', KEYS[i], ARGV[3]) end
  end
  if redis.call('HGET', KEYS[1], 'webhook_url') then
    redis.call('ZADD', KEYS[2], now, ARGV[1])
  end
end
return ended
"""
)

# One dead letter, kept under its webhook-id; the oldest are dropped past the retention time
# or past MAX_DEAD_LETTERS, so a receiver that is gone for good cannot fill Redis. KEYS: the
# hash, its index by time. ARGV: the webhook-id, the detail JSON, the retention (ms), the cap.
DEAD_LETTER = (
    REDIS_NOW
    + """
local now_ms = math.floor(now * 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[3]))
local over = redis.call('ZCARD', KEYS[2]) - #old - tonumber(ARGV[4])
if over > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], #old, #old + over - 1)
  for _, id in ipairs(oldest) do old[#old + 1] = id end
end
for _, id in ipairs(old) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return #old
"""
)

# Count a status word no vocabulary knew. Words come from the provider: past MAX_STATUS_WORDS
# distinct ones the rest are counted together, so a provider inventing words cannot grow the
# hash without end. KEYS: the hash. ARGV: the word, the catch-all's name, the cap.
COUNT_WORD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
    or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
end
return redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
"""
