--- KEYS: source
--- ARGV: kind job_prefix cursor since_s until_s window limit filters
-- A bounded scan of one job source for the console's filtered listing (read only). The
-- source is a job index (kind 'zset', newest first, scored by enqueue time in seconds) or a
-- batch's job list (kind 'list', in request order). It reads at most `window` entries after
-- `cursor` (a member of the index, or an offset in the list; '' for the start), keeps the
-- records that match every filter (a JSON object: status[], tenant, provider, model,
-- error_code, meta_key + meta_value, batch_id, created_from, created_to as ISO text) and
-- stops once `limit` match. Returns {next cursor ('' when the source is exhausted), entries
-- scanned, matching records...}, or false when a zset cursor is no longer in the index.
-- `since_s` and `until_s` ('' for none) bound an index by score, so a time range costs no scan.
local f = cjson.decode(ARG.filters)
local statuses = nil
if f.status and #f.status > 0 then
  statuses = {}
  for _, s in ipairs(f.status) do statuses[s] = true end
end
-- Cheap text checks before a record is decoded: each of `needles` (a filter's value, as JSON
-- writes it) must occur in it, and one of `status_needles` ('"status":"failed"'). A record
-- failing them cannot match; one passing them is decoded and checked field by field.
local needles = f.needles or {}
local status_needles = f.status_needles or {}
local function maybe(raw)
  for _, n in ipairs(needles) do
    if not string.find(raw, n, 1, true) then return false end
  end
  if #status_needles == 0 then return true end
  for _, n in ipairs(status_needles) do
    if string.find(raw, n, 1, true) then return true end
  end
  return false
end
local needs_record = statuses or f.tenant or f.provider or f.model or f.error_code
  or f.meta_key or f.batch_id or f.created_from or f.created_to

local function matches(raw)
  if not needs_record then return true end
  if not maybe(raw) then return false end
  local r = cjson.decode(raw)
  if statuses and not statuses[r.status] then return false end
  if f.tenant and r.tenant ~= f.tenant then return false end
  if f.provider and r.provider ~= f.provider then return false end
  if f.model and (type(r.request) ~= 'table' or r.request.model ~= f.model) then return false end
  if f.error_code and (type(r.error) ~= 'table' or r.error.code ~= f.error_code) then
    return false
  end
  if f.meta_key then
    local m = r.metadata
    if type(m) ~= 'table' or m[f.meta_key] == nil then return false end
    if f.meta_value and m[f.meta_key] ~= f.meta_value then return false end
  end
  if f.batch_id and r.batch_id ~= f.batch_id then return false end
  if f.created_from and r.created_at < f.created_from then return false end
  if f.created_to and r.created_at > f.created_to then return false end
  return true
end

local window = tonumber(ARG.window)
local limit = tonumber(ARG.limit)
local found, scanned = {}, 0
local CHUNK = 200

-- Reads the job's record into found if it matches; true once found holds limit records.
local function take(id)
  scanned = scanned + 1
  local raw = redis.call('GET', ARG.job_prefix .. id)
  if raw and matches(raw) then found[#found + 1] = raw end
  return #found >= limit
end

if ARG.kind == 'list' then
  local offset = tonumber(ARG.cursor ~= '' and ARG.cursor or '0')
  local total = redis.call('LLEN', KEY.source)
  while scanned < window and #found < limit and offset < total do
    local n = math.min(CHUNK, window - scanned)
    local ids = redis.call('LRANGE', KEY.source, offset, offset + n - 1)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      offset = offset + 1
      if take(id) then break end
    end
  end
  local next_cursor = ''
  if offset < total then next_cursor = tostring(offset) end
  return {next_cursor, scanned, found}
end

local start = 0
if ARG.until_s ~= '' then
  start = redis.call('ZCOUNT', KEY.source, '(' .. ARG.until_s, '+inf')
end
if ARG.cursor ~= '' then
  local rank = redis.call('ZREVRANK', KEY.source, ARG.cursor)
  if not rank then return false end
  start = math.max(start, rank + 1)
end
local since = ARG.since_s ~= '' and tonumber(ARG.since_s) or nil
local last, exhausted = '', false
while scanned < window and #found < limit do
  local n = math.min(CHUNK, window - scanned)
  local page = redis.call('ZREVRANGE', KEY.source, start, start + n - 1, 'WITHSCORES')
  if #page == 0 then exhausted = true break end
  for j = 1, #page, 2 do
    local id, score = page[j], tonumber(page[j + 1])
    if since and score < since then exhausted = true break end
    start = start + 1
    last = id
    if take(id) then break end
  end
  if exhausted then break end
end
if not exhausted and redis.call('ZCARD', KEY.source) <= start then exhausted = true end
if exhausted then last = '' end
return {last, scanned, found}
