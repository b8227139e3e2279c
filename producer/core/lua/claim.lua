--- KEYS: lane leases queue claim_seq routes provider_keys[slots bucket parked_token parked_slot]
--- ARGV: lease_s dispatch_ahead per_message token_prefix lane_name envelope[6] limited submit default_route parked_band hold_s providers[name cap rate burst]
-- Claims a lane's due entries (worker/pump.py says what a claim does). Per configured
-- provider (the same order in provider_keys and providers): its account's slots ('' none in
-- this lane), rate bucket ('' none), and the lane's two parked sets of the account (entries
-- waiting for a token, '' without a bucket; for a slot, '' without slots); its name and its
-- account's slot cap, rate and burst (entries sharing a key share them). envelope: the six
-- pieces of the Celery message (worker/messages.py) around its body and ids. parked_band:
-- producer/core/schedule.py's; hold_s: how long a slot taken now is held. Returns the
-- entries claimed, their total and their worst lateness in milliseconds.
--
-- A job's route (the routes hash: job -> provider names, comma-separated, in order of
-- preference) says where its work may go: it takes a rate token and (where the lane takes
-- slots) a slot at the first of them that has both, and the route is cut to start there (the
-- submit step reads its provider off the route's head); a job that already holds a slot
-- somewhere stays there. A job with no route and no default route is claimed without
-- spending anything: its submit step routes it first. Tokens and free slots are counted per
-- account (the keys), never per entry, so entries sharing a key share them.
--
-- A job whose providers are all full is parked (with several providers): its entry stays in
-- its lane, moved to the parked band (its score plus the band, out of every claim's due
-- range), and is noted, under its due time, in the parked set of each account it waits for.
-- A claim looks first at the parked sets of the accounts that have room now, oldest first, so
-- each waiting job is passed over once, not at every claim, and the jobs behind it that may
-- go elsewhere are claimed at once. Whatever else moves a parked entry (a cancel's nudge, a
-- placement) takes it out of the band; its notes are dropped when next read.
pcall(redis.replicate_commands)  -- Redis < 7 needs it for TIME before writes
local lane, leases, queue, seq, routes = KEY.lane, KEY.leases, KEY.queue, KEY.claim_seq, KEY.routes
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local room = tonumber(ARG.dispatch_ahead) - redis.call('LLEN', queue)
if room <= 0 then return {0, 0, 0} end
local per = tonumber(ARG.per_message)
local want = room * per
local limited, submit, default = ARG.limited == '1', ARG.submit == '1', ARG.default_route
local n, band, hold_s = #ARG.providers, tonumber(ARG.parked_band), tonumber(ARG.hold_s)
local index, tokens, spent, free = {}, {}, {}, {}
for i = 1, n do index[ARG.providers[i].name] = i end
local function slots(i) return KEY.provider_keys[i].slots end
local function bucket(i) return KEY.provider_keys[i].bucket end
local function for_token(i) return KEY.provider_keys[i].parked_token end
local function for_slot(i) return KEY.provider_keys[i].parked_slot end
local function has_token(i)
  local b = bucket(i)
  if b == '' then return true end
  if tokens[b] == nil then
    local rate, burst = tonumber(ARG.providers[i].rate), tonumber(ARG.providers[i].burst)
    local left = tonumber(redis.call('HGET', b, 'tokens') or burst)
    local since = tonumber(redis.call('HGET', b, 'ts') or now)
    tokens[b] = math.min(burst, left + math.max(0, now - since) * rate)
  end
  return tokens[b] >= 1
end
local function has_slot(i)
  local s = slots(i)
  if s == '' then return true end
  if free[s] == nil then
    -- A slot taken for a submit is held under the claim's lease (extended while the submit
    -- runs, pushed far ahead once the provider has the job): a dead claim's slot frees itself.
    -- One taken for a poll (a job retried into polling) is held for the generation.
    redis.call('ZREMRANGEBYSCORE', s, '-inf', now)
    free[s] = tonumber(ARG.providers[i].cap) - redis.call('ZCARD', s)
  end
  return free[s] > 0
end
-- The provider a due job's step may go to now (0: unrouted, claimed as is), or nil and the
-- parked sets of what it waits for.
local function pick(m)
  local route = redis.call('HGET', routes, m) or default
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
      if slots(i) ~= '' and redis.call('ZSCORE', slots(i), m) then
        -- a slot held pins the job to its provider
        if has_token(i) then return i end
        return nil, {for_token(i)}
      end
      if not has_token(i) then
        waits[#waits + 1] = for_token(i)
      elseif not has_slot(i) then
        waits[#waits + 1] = for_slot(i)
      else
        if k > 1 then
          redis.call('HSET', routes, m, table.concat(names, ',', k))
        end
        return i
      end
      if not submit then return nil, waits end  -- only a submit may go elsewhere
    end
  end
  return nil, waits
end
local function take(i, m, until_)
  local b, s = bucket(i), slots(i)
  if b ~= '' then
    tokens[b] = tokens[b] - 1
    spent[b] = true
  end
  if s ~= '' then
    if redis.call('ZSCORE', s, m) then
      redis.call('ZADD', s, 'GT', until_, m)
    else
      redis.call('ZADD', s, now + hold_s, m)
      free[s] = free[s] - 1
    end
  end
end
local chosen, late, sets = {}, {}, {}
local until_ = now + tonumber(ARG.lease_s)
for i = 1, n do
  for _, set in ipairs({for_token(i), for_slot(i)}) do
    if limited and set ~= '' then sets[set] = i end
  end
end
-- An entry parked in a set no claim reads any more (its provider's limits or key changed)
-- would wait for ever: at each claim two parked entries, picked by the clock's
-- microseconds, go back to the due range if no set of the lane notes them.
for _, pick_at in ipairs({tonumber(t[2]), math.floor(tonumber(t[2]) / 7)}) do
  local parked_n = redis.call('ZCOUNT', lane, band, '+inf')
  if parked_n == 0 then break end
  local rank = redis.call('ZCARD', lane) - parked_n + pick_at % parked_n
  local got = redis.call('ZRANGE', lane, rank, rank, 'WITHSCORES')
  if got[1] and tonumber(got[2]) >= band then
    local noted = false
    for set in pairs(sets) do
      if redis.call('ZSCORE', set, got[1]) then noted = true end
    end
    if not noted then redis.call('ZADD', lane, 'XX', tonumber(got[2]) - band, got[1]) end
  end
end
if want > 0 then
  -- What may be claimed, oldest first: the due entries (with several providers, looking
  -- past some that must wait, which are parked), and the parked ones of accounts with room.
  local window = want
  if limited and n > 1 then window = want + 256 end
  local found = {}
  local due = redis.call('ZRANGEBYSCORE', lane, '-inf', now, 'WITHSCORES', 'LIMIT', 0, window)
  for j = 1, #due, 2 do found[#found + 1] = {due[j], tonumber(due[j + 1]), nil} end
  local scanned = #found
  for set, i in pairs(sets) do
    if has_token(i) and (set == for_token(i) or has_slot(i)) then
      local parked = redis.call('ZRANGE', set, 0, want - 1, 'WITHSCORES')
      for j = 1, #parked, 2 do
        found[#found + 1] = {parked[j], tonumber(parked[j + 1]), set}
      end
    end
  end
  if #found > scanned then table.sort(found, function(x, y) return x[2] < y[2] end) end
  local done = {}
  for _, f in ipairs(found) do
    if #chosen >= want then break end
    local m, at, from = f[1], f[2], f[3]
    local fresh = true
    if from then
      local score = redis.call('ZSCORE', lane, m)
      if not score or tonumber(score) < band then
        redis.call('ZREM', from, m)  -- moved since it was parked
        fresh = false
      end
    end
    if fresh and not done[m] then
      done[m] = true
      local i, waits = 0, nil
      if limited then i, waits = pick(m) end
      if i then
        if i > 0 then take(i, m, until_) end
        if from then
          for set in pairs(sets) do redis.call('ZREM', set, m) end
        end
        chosen[#chosen + 1] = m
        late[#late + 1] = now - at
      elseif n == 1 and not from and (submit or waits[1] == for_token(1)) then
        -- One provider and no token (or no slot for a submit): everything due after it
        -- waits, in order. A poll waiting for a slot is parked: the polls behind it hold
        -- theirs, and only their answers free one.
        break
      else
        if not from then redis.call('ZADD', lane, 'XX', band + at, m) end
        local still = false
        for _, set in ipairs(waits) do
          redis.call('ZADD', set, at, m)
          still = still or set == from
        end
        if from and not still then redis.call('ZREM', from, m) end
      end
    end
  end
end
for b in pairs(spent) do
  redis.call('HSET', b, 'tokens', tostring(tokens[b]), 'ts', tostring(now))
  redis.call('EXPIRE', b, 3600)
end
for g = 1, #chosen, per do
  local token = ARG.token_prefix .. redis.call('INCR', seq)
  local members, recovered = {}, {}
  for i = g, math.min(g + per - 1, #chosen) do
    local m = chosen[i]
    if redis.call('HEXISTS', leases, m) == 1 then recovered[#recovered + 1] = cjson.encode(m) end
    redis.call('HSET', leases, m, token)
    redis.call('ZADD', lane, 'XX', until_, m)
    members[#members + 1] = cjson.encode(m)
  end
  local body = '[[[' .. table.concat(members, ',') .. '],"' .. token .. '",'
    .. cjson.encode(ARG.lane_name) .. ',[' .. table.concat(recovered, ',') .. ']],{},'
    .. '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
  local e = ARG.envelope
  redis.call('LPUSH', queue, e[1] .. cjson.encode(body) .. e[2] .. token .. e[3] .. token
    .. e[4] .. token .. e[5] .. token .. e[6])
end
-- How late the claimed work was picked up (ms): the schedule's lateness, for metrics.
local total, worst = 0, 0
for _, l in ipairs(late) do
  total = total + l
  if l > worst then worst = l end
end
return {#chosen, math.floor(total * 1000), math.floor(worst * 1000)}
