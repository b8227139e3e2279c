"""The pump: claims due schedule entries and hands them to Celery as messages.

Every worker's main process runs one (a bootstep thread); one Lua script per lane makes any
number of them safe together, on any number of hosts. The script, atomically:
1. takes as many due entries as the lane's Celery queue has room for (dispatch_ahead
   messages at most wait there: the rest of the due work waits in the schedule, where a lost
   message costs nothing and the order is by due time),
2. spends the shared limits: a rate token per entry of a rate-limited lane, a provider slot
   per submit (and per poll of a job holding none: worker/limits.py), and parks the entries
   whose providers are all full,
3. leases each entry (its score moves lease_s ahead and the lease hash notes the claim's
   token; an entry already noted there is a recovery: its last claim never finished),
4. pushes one message per claim: poll_batch_size entries for polls, one for the rest.
A SIGKILL anywhere in or around it leaves entries due or leased, never lost.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import bootsteps

from producer.core.names import LANES, Keys, Lane
from producer.core.settings import Settings
from worker.limits import ProviderLimits
from worker.messages import claim_envelope

log = structlog.get_logger("videoqueue.pump")

# KEYS: lane, leases, queue, claim counter, routes, then per provider: its account's slots
# ('' none in this lane), rate bucket ('' none), and the lane's two parked sets of the account
# (entries waiting for a token, '' without a bucket; for a slot, '' without slots).
# ARGV: lease_s, dispatch_ahead, entries per message, token prefix, the lane's name, the six
# pieces of the message envelope, then limited (1: spend limits), submit (1: a submit lane,
# whose jobs may go to any provider of their route), the default route ('' none), the number
# of providers, the parked band (producer/core/schedule.py), how long a slot taken now is held (s),
# and per provider: name, slot cap, rate, burst (the account's: entries sharing a key share
# them). Returns the entries claimed, their total and their worst lateness in milliseconds.
#
# A job's route (the routes hash: job -> provider names, comma-separated, in order of
# preference) says where its work may go: it takes a rate token and (where the lane takes
# slots) a slot at the first of them that has both, and the route is cut to start there (the
# submit step reads its provider off the route's head); a job that already holds a slot
# somewhere stays there. A job with no route and no default route is claimed without
# spending anything: its submit step routes it first. Tokens and free slots are counted per
# account (the keys), never per entry, so entries sharing a key share them.
#
# A job whose providers are all full is parked (with several providers): its entry stays in
# its lane, moved to the parked band (its score plus the band, out of every claim's due
# range), and is noted, under its due time, in the parked set of each account it waits for.
# A claim looks first at the parked sets of the accounts that have room now, oldest first, so
# each waiting job is passed over once, not at every claim, and the jobs behind it that may
# go elsewhere are claimed at once. Whatever else moves a parked entry (a cancel's nudge, a
# placement) takes it out of the band; its notes are dropped when next read.
_CLAIM = """
pcall(redis.replicate_commands)  -- Redis < 7 needs it for TIME before writes
local lane, leases, queue, seq, routes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local room = tonumber(ARGV[2]) - redis.call('LLEN', queue)
if room <= 0 then return {0, 0, 0} end
local per = tonumber(ARGV[3])
local want = room * per
local limited, submit, default = ARGV[12] == '1', ARGV[13] == '1', ARGV[14]
local n, band, hold_s = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local index, tokens, spent, free = {}, {}, {}, {}
for i = 1, n do index[ARGV[14 + 4 * i]] = i end
local function slots(i) return KEYS[2 + 4 * i] end
local function bucket(i) return KEYS[3 + 4 * i] end
local function for_token(i) return KEYS[4 + 4 * i] end
local function for_slot(i) return KEYS[5 + 4 * i] end
local function has_token(i)
  local b = bucket(i)
  if b == '' then return true end
  if tokens[b] == nil then
    local rate, burst = tonumber(ARGV[16 + 4 * i]), tonumber(ARGV[17 + 4 * i])
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
    free[s] = tonumber(ARGV[15 + 4 * i]) - redis.call('ZCARD', s)
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
local until_ = now + tonumber(ARGV[1])
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
  local token = ARGV[4] .. redis.call('INCR', seq)
  local members, recovered = {}, {}
  for i = g, math.min(g + per - 1, #chosen) do
    local m = chosen[i]
    if redis.call('HEXISTS', leases, m) == 1 then recovered[#recovered + 1] = cjson.encode(m) end
    redis.call('HSET', leases, m, token)
    redis.call('ZADD', lane, 'XX', until_, m)
    members[#members + 1] = cjson.encode(m)
  end
  local body = '[[[' .. table.concat(members, ',') .. '],"' .. token .. '",'
    .. cjson.encode(ARGV[5]) .. ',[' .. table.concat(recovered, ',') .. ']],{},'
    .. '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
  redis.call('LPUSH', queue, ARGV[6] .. cjson.encode(body) .. ARGV[7] .. token .. ARGV[8]
    .. token .. ARGV[9] .. token .. ARGV[10] .. token .. ARGV[11])
end
-- How late the claimed work was picked up (ms): the schedule's lateness, for metrics.
local total, worst = 0, 0
for _, l in ipairs(late) do
  total = total + l
  if l > worst then worst = l end
end
return {#chosen, math.floor(total * 1000), math.floor(worst * 1000)}
"""


@dataclass(frozen=True)
class Claimed:
    """What one claim of a lane handed out, and how late (after its due time) it was."""

    entries: int
    lateness_total_s: float
    lateness_max_s: float


class Pump:
    """Claims due entries of every lane and queues their messages.

    Args:
        client: the Redis holding job records.
        settings: the deployment's settings (queues, lease, batch size, limits).
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.limits = ProviderLimits(client, settings)
        self._claim = client.register_script(_CLAIM)
        self.token_prefix = os.urandom(4).hex() + "."
        self._lanes = [(lane, *self._terms(lane)) for lane in LANES]

    def _terms(self, lane: Lane) -> tuple[list[str], list[Any]]:
        s = self.settings
        queue = lane.queue(s.queue)
        limit_keys, limit_args = self.limits.claim_terms(lane)
        per = s.poll_batch_size if lane is Lane.POLL else 1
        keys = [self.keys.schedule(lane), self.keys.leases(), queue, self.keys.claim_seq()]
        args = [s.lease_s, s.dispatch_ahead, per, self.token_prefix, lane.value,
                *claim_envelope(lane.task, queue)]  # fmt: skip
        return keys + limit_keys, args + limit_args

    def claim_due(self) -> dict[Lane, Claimed]:
        """One pass over every lane, in one round trip; what each lane handed out."""
        with self.redis.pipeline(transaction=False) as pipe:
            for _, keys, args in self._lanes:
                self._claim(keys=keys, args=args, client=pipe)
            results = pipe.execute()
        return {
            lane: Claimed(int(n), int(total_ms) / 1000, int(worst_ms) / 1000)
            for (lane, _, _), (n, total_ms, worst_ms) in zip(self._lanes, results, strict=True)
        }


class PumpStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep: a thread in the worker's main process that claims due work every
    interval. Every worker runs one; any one of them keeps every job moving."""

    requires = {"celery.worker.components:Pool"}
    interval_s = 0.05

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self._thread = threading.Thread(target=self._run, name="videoqueue-pump", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from worker import metrics
        from worker.runtime import runtime

        pump = runtime().pump
        while not self._stop.is_set():
            try:
                passed = pump.claim_due()
                metrics.claims(passed)
                claimed = sum(c.entries for c in passed.values())
            except Exception as e:  # noqa: BLE001  (the pump must outlive anything)
                # Once a second, not every tick: an outage should not flood the log.
                if isinstance(e, redis.RedisError):
                    log.warning("pump could not reach Redis", error_type=type(e).__name__)
                else:
                    log.error("pump failed", error_type=type(e).__name__, error=str(e)[:200])
                self._stop.wait(1.0)
                continue
            # Work claimed means more may be due: go again at once; else wait a tick. This
            # wait is the pump thread's, not a task's: no task ever sleeps.
            if not claimed:
                self._stop.wait(self.interval_s)
