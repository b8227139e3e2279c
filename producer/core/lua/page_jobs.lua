--- KEYS: index
--- ARGV: job_prefix after limit order
-- One page of a job index (the job index or a tenant's), newest first (order 'desc') or
-- oldest first ('asc'): the records of up to `limit` jobs after the job `after` ('' for the
-- first page), then whether another follows. The cursor is a member, not a rank or a time,
-- so jobs enqueued meanwhile do not shift a page and jobs enqueued at the same instant (a
-- batch's) are neither repeated nor skipped; oldest first, the jobs enqueued since the
-- first page come on its last pages. Entries whose record has expired are skipped and leave
-- the index here (only once read, in the same step, so the ranks read stay put). Returns
-- false when `after` is not in it.
local rank_of, range = 'ZREVRANK', 'ZREVRANGE'
if ARG.order == 'asc' then rank_of, range = 'ZRANK', 'ZRANGE' end
local start = 0
if ARG.after ~= '' then
  local rank = redis.call(rank_of, KEY.index, ARG.after)
  if not rank then return false end
  start = rank + 1
end
local limit = tonumber(ARG.limit)
local found, gone = {}, {}
-- One more than a page: whether it exists is has_more.
while #found <= limit do
  local ids = redis.call(range, KEY.index, start, start + limit - #found)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local record = redis.call('GET', ARG.job_prefix .. id)
    if record then found[#found + 1] = record else gone[#gone + 1] = id end
  end
  start = start + #ids
end
for j = 1, #gone, 1000 do
  redis.call('ZREM', KEY.index, unpack(gone, j, math.min(j + 999, #gone)))
end
local more = 0
if #found > limit then
  more = 1
  found[#found] = nil
end
return {more, found}
