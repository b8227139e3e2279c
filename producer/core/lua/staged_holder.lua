-- For the scripts that claim idempotency keys: whether the job holding a claim is staged,
-- queued in a batch other than `except_batch` (a key) that its producer has not released.
-- Such a job may never run (its producer died), so its claim does not hold against another
-- job: the first job of a key that runs owns it, and release_batch drops a staged job whose
-- claim was taken meanwhile (never two jobs of one key, never an id that will not run).
local function staged(job_prefix, batch_prefix, id, except_batch)
  local ok, record = pcall(cjson.decode, redis.call('GET', job_prefix .. id) or 'null')
  if not ok or type(record) ~= 'table' or record.status ~= 'queued'
      or type(record.batch_id) ~= 'string' then
    return false
  end
  local batch = batch_prefix .. record.batch_id
  return batch ~= except_batch and redis.call('HGET', batch, 'state') == 'staging'
end
