--- KEYS: lane leases queue claim_seq routes provider_keys[slots bucket parked_token parked_slot]
--- ARGV: lease_s dispatch_ahead per_message token_prefix lane_name envelope[6] limited default_route parked_band hold_s providers[name cap rate burst]
--- uses: redis_now claim_limits claim_push parked_strays
-- Claims a lane's due entries in due order (worker/pump.py says what a claim does): every
-- lane but submit's, whose claim shares slots out fairly (lua/claim_submit.lua). Per
-- configured provider (the same order in provider_keys and providers): its account's slots
-- ('' none in this lane), rate bucket ('' none), and the lane's two parked sets of the
-- account (entries waiting for a token, '' without a bucket; for a slot, '' without slots);
-- its name and its account's slot cap, rate and burst (lua/claim_limits.lua). envelope: the
-- six pieces of the Celery message (worker/messages.py) around its body and ids.
-- parked_band: producer/core/schedule.py's; hold_s: how long a slot taken now is held.
-- Returns the entries claimed, their total and their worst lateness in milliseconds.
--
-- A job's route (the routes hash: job -> provider names, comma-separated) says where its
-- work goes: a poll takes a rate token (and, for a job holding no slot, a slot) at the first
-- of them that is configured. A job with no route and no default route is claimed without
-- spending anything.
--
-- A poll that must wait for a slot is parked (and one for a token, with several providers):
-- its entry stays in its lane, moved to the parked band (its score plus the band, out of
-- every claim's due range), and is noted, under its due time, in the parked set of the
-- account it waits for. A claim looks first at the parked sets of the accounts that have room
-- now, oldest first, so each waiting job is passed over once, not at every claim. Whatever
-- else moves a parked entry (a cancel's nudge, a placement) takes it out of the band; its
-- notes are dropped when next read.
local lane, routes = KEY.lane, KEY.routes
local room = tonumber(ARG.dispatch_ahead) - redis.call('LLEN', KEY.queue)
if room <= 0 then return {0, 0, 0, 1} end  -- 1: its queue is full (worker/pump.py)
local per = tonumber(ARG.per_message)
local want = room * per
local limited, default = ARG.limited == '1', ARG.default_route
local band = tonumber(ARG.parked_band)
local function for_token(i) return KEY.provider_keys[i].parked_token end
local function for_slot(i) return KEY.provider_keys[i].parked_slot end
-- The provider a due job's step may go to now (0: unrouted, claimed as is), or nil and the
-- parked set of what it waits for.
local function pick(m)
  local route = redis.call('HGET', routes, m) or default
  for name in string.gmatch(route, '[^,]+') do
    local i = index[name]
    if i then
      if not has_token(i) then return nil, for_token(i) end
      if not holds_slot(i, m) and not has_slot(i) then return nil, for_slot(i) end
      return i
    end
  end
  return 0  -- unrouted, or a provider no longer configured: its step says so
end
local chosen, late, sets = {}, {}, {}
local until_ = now + tonumber(ARG.lease_s)
for i = 1, n do
  for _, set in ipairs({for_token(i), for_slot(i)}) do
    if limited and set ~= '' then sets[set] = i end
  end
end
unpark_strays(function(m)
  for set in pairs(sets) do
    if redis.call('ZSCORE', set, m) then return true end
  end
  return false
end)
-- What may be claimed, oldest first: the due entries (with several providers, looking past
-- some that must wait, which are parked), and the parked ones of accounts with room.
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
    local i, wait = 0, nil
    if limited then i, wait = pick(m) end
    if i then
      if i > 0 then take(i, m, until_) end
      if from then
        for set in pairs(sets) do redis.call('ZREM', set, m) end
      end
      chosen[#chosen + 1] = m
      late[#late + 1] = now - at
    elseif n == 1 and not from and wait == for_token(1) then
      -- One provider and no token: everything due after it waits, in order. A poll waiting
      -- for a slot is parked: the polls behind it hold theirs, and only their answers free
      -- one.
      break
    else
      if not from then redis.call('ZADD', lane, 'XX', band + at, m) end
      redis.call('ZADD', wait, at, m)
      if from and from ~= wait then redis.call('ZREM', from, m) end
    end
  end
end
save_tokens()
return push(chosen, late, per, until_)
