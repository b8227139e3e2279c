--- KEYS: lane legacy_lane leases queue claim_seq routes deadlines active capped tags vtime owners reserving provider_keys[slots bucket parked_token parked_slot]
--- ARGV: lease_s dispatch_ahead token_prefix lane_name envelope[6] default_route parked_band hold_s fair aging_s recheck_s intake job_prefix tenant_prefix providers[name cap rate burst]
--- uses: redis_now claim_limits claim_push parked_strays
-- Claims submits: scarce provider slots and rate tokens go to tenants by weight, within a
-- tenant by priority (worker/pump.py says what a claim does; README "Fair share").
--
-- Start-time fair queueing (Goyal, Vin and Cheng 1996) over tenants. Each tenant with due
-- work has a queue (its ready set) and a virtual start tag (the active set, lowest first);
-- handing out one of its jobs advances its tag by 1 / weight, and the virtual time to the tag
-- served. A tenant that becomes active starts at max(its last tag, the virtual time): idle
-- time earns no credit, and a newcomer is served at once rather than after everybody's
-- backlog. Every job costs one unit (a slot held for one generation): with generations of
-- similar length, shares of slots follow the weights. Picking the lowest tag and the head of
-- a queue are sorted-set reads: a claim costs O(log n) in tenants and jobs per job handed out.
-- Work-conserving: while a slot (and a token) is free and any tenant has due work, some job
-- takes it; a tenant that cannot use it (at its ceiling) is set aside, not charged.
--
-- 1. Intake: up to `intake` due entries of the lane move into their tenant's ready set (score:
--    due time minus priority times aging_s, lowest first: a low priority ages into the lead,
--    so it never starves) and their lane entries into the parked band (out of every claim's
--    due range, as lua/claim.lua parks). A job whose record ended (cancelled), whose own
--    deadline has passed, or that has no record is claimed at once, spending nothing: its
--    step ends it. Without fair share ('0') every job is in one queue "*": priority and due
--    order across tenants, no tenant's policy applied (the order before fair share).
-- 2. A job still waiting at its own deadline (the deadlines set) is claimed to be ended.
-- 3. Tenants at their max_in_flight wait in the capped set until recheck_s passed or one of
--    their slots is given back (producer/core/limits.py sets their time to 0).
-- 4. Reserved slots: a tenant of the reserving set with due work and fewer slots than its
--    `reserved` is owed the difference; others may take a slot only beyond what is owed, and
--    owed tenants are served first. (Counted across every provider of the tenant.)
-- 5. Hand out: the lowest tag's head job takes a token and a slot at the first provider of
--    its route that has both (the route is cut to start there), its tenant's in-flight set
--    notes it (owners: job -> tenant, for the lease's extension and the give-back). With one
--    provider, a head job that finds no room ends the claim (nobody else would find any).
--    With several, it leaves its queue for the parked sets of the accounts it waits for
--    (provider_keys' parked_token, parked_slot; scored by its queue's score), so the jobs
--    behind it for other providers go; a claim first puts back into their queues as many
--    parked jobs as each account has room for, lowest score first.
-- A moved entry (placed elsewhere, claimed for its deadline) leaves a stale ready member,
-- dropped when met: its lane score is no longer in the band.
local lane, routes, band = KEY.lane, KEY.routes, tonumber(ARG.parked_band)
local fair, aging, tp = ARG.fair == '1', tonumber(ARG.aging_s), ARG.tenant_prefix
local room = tonumber(ARG.dispatch_ahead) - redis.call('LLEN', KEY.queue)
if room <= 0 then return {0, 0, 0, 1} end  -- 1: its queue is full (worker/pump.py)
local until_ = now + tonumber(ARG.lease_s)
local chosen, late = {}, {}
local function ready(q) return tp .. q .. ':ready' end
local function held_key(x) return tp .. x .. ':in_flight' end
local function policy(x, field)
  local v = redis.call('HGET', tp .. x .. ':policy', field)
  if v == false or v == '' then return nil end
  return tonumber(v)
end
local vtime = tonumber(redis.call('GET', KEY.vtime) or '0')
local activated = {}
local function activate(q)
  if activated[q] then return end
  activated[q] = true
  if redis.call('ZSCORE', KEY.capped, q) then return end
  local tag = tonumber(redis.call('HGET', KEY.tags, q) or '0')
  redis.call('ZADD', KEY.active, 'NX', math.max(tag, vtime), q)
end
local taken = {}  -- claimed by this claim: never handed out twice
local function claim_now(m, at)
  taken[m] = true
  chosen[#chosen + 1] = m
  late[#late + 1] = math.max(0, now - at)
end
local function for_token(i) return KEY.provider_keys[i].parked_token end
local function for_slot(i) return KEY.provider_keys[i].parked_slot end
local function queue_of(m)
  return fair and (redis.call('HGET', KEY.owners, m) or 'default') or '*'
end
-- What a deployment left in the lane batch jobs had before priorities joins this one.
if KEY.legacy_lane ~= '' then
  local old = redis.call('ZRANGE', KEY.legacy_lane, 0, 999, 'WITHSCORES')
  for j = 1, #old, 2 do
    local score = tonumber(old[j + 1])
    if score >= band then score = score - band end  -- parked there: taken in here
    redis.call('ZADD', lane, 'NX', score, old[j])
    redis.call('ZREM', KEY.legacy_lane, old[j])
  end
end
-- 1. Intake.
local due = redis.call('ZRANGEBYSCORE', lane, '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARG.intake))
for j = 1, #due, 2 do
  local m, at = due[j], tonumber(due[j + 1])
  local raw = redis.call('GET', ARG.job_prefix .. m)
  local ok, record = false, nil
  if raw then ok, record = pcall(cjson.decode, raw) end
  if not ok or type(record) ~= 'table' or (record.status ~= 'queued' and #chosen < room) then
    claim_now(m, at)  -- no record, or ended: its step tidies up
  else
    local tenant = type(record.tenant) == 'string' and record.tenant or 'default'
    local prio = tonumber(record.priority)
    if not prio then prio = (type(record.batch_id) == 'string') and -1 or 0 end
    local deadline = tonumber(record.deadline_unix_s)
    if deadline and deadline <= now and #chosen < room then
      claim_now(m, at)  -- its step fails it "deadline_exceeded"
    else
      if deadline then redis.call('ZADD', KEY.deadlines, deadline, m) end
      local q = fair and tenant or '*'
      redis.call('ZADD', lane, 'XX', band + at, m)
      redis.call('ZADD', ready(q), at - prio * aging, m)
      redis.call('HSET', KEY.owners, m, tenant)
      activate(q)
    end
  end
end
-- A parked entry that neither its queue nor a parked set read now holds goes back.
unpark_strays(function(m)
  if redis.call('ZSCORE', ready(queue_of(m)), m) then return true end
  for i = 1, n do
    for _, set in ipairs({for_token(i), for_slot(i)}) do
      if set ~= '' and redis.call('ZSCORE', set, m) then return true end
    end
  end
  return false
end)
-- 2. Jobs still waiting at their own deadline (one a claim holds is left to its step).
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEY.deadlines, '-inf', now, 'LIMIT', 0, 64)) do
  if #chosen >= room then break end
  redis.call('ZREM', KEY.deadlines, m)
  local score = redis.call('ZSCORE', lane, m)
  if score and redis.call('HEXISTS', KEY.leases, m) == 0 and not taken[m] then
    score = tonumber(score)
    redis.call('ZREM', ready(queue_of(m)), m)
    claim_now(m, score >= band and score - band or score)
  end
end
-- 3. Tenants whose ceiling may have room again.
for _, q in ipairs(redis.call('ZRANGEBYSCORE', KEY.capped, '-inf', now, 'LIMIT', 0, 64)) do
  redis.call('ZREM', KEY.capped, q)
  if redis.call('EXISTS', ready(q)) == 1 then activate(q) end
end
-- Slots each tenant holds now (a dead claim's expire with its lease).
local in_flight = {}
local function held(x)
  if in_flight[x] == nil then
    redis.call('ZREMRANGEBYSCORE', held_key(x), '-inf', now)
    in_flight[x] = redis.call('ZCARD', held_key(x))
  end
  return in_flight[x]
end
-- 4. What is owed to reserving tenants with due work.
local owed, owed_total = {}, 0
if fair then
  for _, x in ipairs(redis.call('SMEMBERS', KEY.reserving)) do
    local r = policy(x, 'reserved') or 0
    if r > 0 and redis.call('EXISTS', ready(x)) == 1 then
      owed[x] = math.max(0, r - held(x))
      owed_total = owed_total + owed[x]
    end
  end
end
-- The provider the job goes to now (0: unrouted, claimed as is: its step routes it), or nil
-- and the parked sets of what it waits for (keep: slots held back for others).
local function pick(m, keep)
  local route = redis.call('HGET', routes, m) or ARG.default_route
  if route == '' then return 0 end
  local names, known = {}, false
  for name in string.gmatch(route, '[^,]+') do
    names[#names + 1] = name
    known = known or index[name] ~= nil
  end
  if not known then return 0 end  -- a provider no longer configured: its step says so
  local waits = {}
  for k, name in ipairs(names) do
    local i = index[name]
    if i then
      if holds_slot(i, m) then  -- a slot held pins the job to its provider
        if has_token(i) then return i end
        return nil, {for_token(i)}
      end
      if not has_token(i) then
        waits[#waits + 1] = for_token(i)
      elseif not has_slot(i, keep) then
        waits[#waits + 1] = for_slot(i)
      else
        if k > 1 then redis.call('HSET', routes, m, table.concat(names, ',', k)) end
        return i
      end
    end
  end
  return nil, waits
end
-- Parked jobs back into their queues, as many as each account has room for.
for i = 1, n do
  for _, set in ipairs({for_token(i), for_slot(i)}) do
    if set ~= '' and has_token(i) and (set == for_token(i) or has_slot(i)) then
      local fits = math.floor(tokens[bucket(i)] or room)
      if set == for_slot(i) then fits = math.min(fits, free[slots(i)]) end
      fits = math.min(fits, room)
      if fits > 0 then
        local back = redis.call('ZRANGE', set, 0, fits - 1, 'WITHSCORES')
        for j = 1, #back, 2 do
          local m = back[j]
          redis.call('ZREM', set, m)
          local score = redis.call('ZSCORE', lane, m)
          if score and tonumber(score) >= band and not taken[m] then
            local q = queue_of(m)
            redis.call('ZADD', ready(q), back[j + 1], m)
            activate(q)
          end
        end
      end
    end
  end
end
-- 5. Hand out, lowest tag first.
local skip, skipped = {}, 0
local function next_queue()
  for x, u in pairs(owed) do
    if u > 0 and not skip[x] then return x end
  end
  -- Passed-over queues keep their tags, so they are the first `skipped` of the active set.
  for _, q in ipairs(redis.call('ZRANGE', KEY.active, 0, skipped)) do
    if not skip[q] then return q end
  end
  return nil
end
local function pass_over(q)
  skip[q] = true
  skipped = skipped + 1
end
local guard = 4 * math.max(room, 0) + 64
while #chosen < room and guard > 0 do
  guard = guard - 1
  local q = next_queue()
  if not q then break end
  local head = redis.call('ZRANGE', ready(q), 0, 0)[1]
  local score = head and redis.call('ZSCORE', lane, head)
  if not head then
    redis.call('ZREM', KEY.active, q)  -- its queue ran dry: its tag waits in tags
    owed[q] = nil
  elseif not score or tonumber(score) < band or taken[head] then
    redis.call('ZREM', ready(q), head)  -- moved since it was taken in, or claimed already
  else
    local owner = fair and q or (redis.call('HGET', KEY.owners, head) or 'default')
    local ceiling = fair and policy(owner, 'max_in_flight')
    if ceiling and held(owner) >= ceiling then
      redis.call('ZREM', KEY.active, q)
      redis.call('ZADD', KEY.capped, now + tonumber(ARG.recheck_s), q)
      owed[q] = nil
    else
      local mine = owed[owner] or 0
      local i, waits = pick(head, owed_total - mine)
      if i == nil and n > 1 then
        local key = redis.call('ZSCORE', ready(q), head)
        redis.call('ZREM', ready(q), head)
        for _, set in ipairs(waits) do redis.call('ZADD', set, key, head) end
      elseif i == nil then
        -- With one provider, no tenant owed nothing can go either (those owed slots are
        -- asked first), but another owed tenant may.
        if mine == 0 then break end
        pass_over(q)
      else
        if n > 1 then
          for k = 1, n do
            for _, set in ipairs({for_token(k), for_slot(k)}) do
              if set ~= '' then redis.call('ZREM', set, head) end
            end
          end
        end
        if i > 0 then take(i, head, until_) end
        redis.call('ZREM', ready(q), head)
        redis.call('ZADD', held_key(owner), now + tonumber(ARG.hold_s), head)
        redis.call('HSET', KEY.owners, head, owner)
        held(owner)
        in_flight[owner] = in_flight[owner] + 1
        if mine > 0 then
          owed[owner] = mine - 1
          owed_total = owed_total - 1
        end
        claim_now(head, tonumber(score) - band)
        -- Charge one unit at the tenant's weight.
        local tag = tonumber(redis.call('ZSCORE', KEY.active, q) or vtime)
        vtime = math.max(vtime, tag)
        local w = (fair and policy(q, 'weight')) or 1
        tag = tag + 1 / w
        redis.call('HSET', KEY.tags, q, tag)
        if redis.call('EXISTS', ready(q)) == 1 then
          redis.call('ZADD', KEY.active, 'XX', tag, q)
        else
          redis.call('ZREM', KEY.active, q)
          owed[q] = nil
        end
      end
    end
  end
end
redis.call('SET', KEY.vtime, vtime)
save_tokens()
return push(chosen, late, 1, until_)
