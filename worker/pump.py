"""The pump: claims due schedule entries and hands them to Celery as messages.

Every worker's main process runs one (a bootstep thread); one Lua script per lane makes any
number of them safe together, on any number of hosts. The script, atomically:
1. takes as many due entries as the lane's Celery queue has room for (dispatch_ahead
   messages at most wait there: the rest of the due work waits in the schedule, where a lost
   message costs nothing and the order is by due time),
2. spends the shared limits: a rate token per entry of a rate-limited lane, a provider slot
   per submit (worker/limits.py),
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

from producer.messages import claim_envelope
from producer.names import LANES, Keys, Lane
from producer.settings import Settings
from worker.limits import ProviderLimits

log = structlog.get_logger("videoqueue.pump")

# KEYS: lane, leases, queue, claim counter, routes, then per provider: slots ('' none), rate
# bucket ('' none). ARGV: lease_s, dispatch_ahead, entries per message, token prefix, the
# lane's name, the six pieces of the message envelope, then limited (1: spend limits), submit
# (1: a submit lane, which takes slots), the default route ('' none), the number of
# providers, and per provider: name, slot cap, rate, burst. Returns the entries claimed,
# their total and their worst lateness in milliseconds.
#
# A job's route (the routes hash: job -> provider names, comma-separated, in order of
# preference) says where its work may go: a submit takes a rate token and a slot at the first
# of them that has both, and the route is cut to start there (the submit step reads its
# provider off the route's head); a job that already holds a slot somewhere stays there. A
# job with no route and no default route is claimed without spending anything: its submit
# step routes it first. A job whose providers are all full is skipped and stays due; the
# ones after it that may go elsewhere are claimed.
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
local n = tonumber(ARGV[15])
local index, tokens, free = {}, {}, {}
for i = 1, n do index[ARGV[12 + 4 * i]] = i end
local function slots(i) return KEYS[4 + 2 * i] end
local function bucket(i) return KEYS[5 + 2 * i] end
local function has_token(i)
  if bucket(i) == '' then return true end
  if tokens[i] == nil then
    local rate, burst = tonumber(ARGV[14 + 4 * i]), tonumber(ARGV[15 + 4 * i])
    local b = bucket(i)
    local left = tonumber(redis.call('HGET', b, 'tokens') or burst)
    local since = tonumber(redis.call('HGET', b, 'ts') or now)
    tokens[i] = math.min(burst, left + math.max(0, now - since) * rate)
  end
  return tokens[i] >= 1
end
local function has_slot(i)
  if not submit or slots(i) == '' then return true end
  if free[i] == nil then
    -- A slot taken for a submit is held under the claim's lease (extended while the submit
    -- runs, pushed far ahead once the provider has the job): a dead claim's slot frees itself.
    redis.call('ZREMRANGEBYSCORE', slots(i), '-inf', now)
    free[i] = tonumber(ARGV[13 + 4 * i]) - redis.call('ZCARD', slots(i))
  end
  return free[i] > 0
end
-- The provider a due job's step may go to now (0: unrouted, claimed as is), or nil.
local function pick(m)
  local route = redis.call('HGET', routes, m) or default
  if route == '' then return 0 end
  local names, known = {}, false
  for name in string.gmatch(route, '[^,]+') do
    names[#names + 1] = name
    known = known or index[name] ~= nil
  end
  if not known then return 0 end  -- a provider no longer configured: its step says so
  for k, name in ipairs(names) do
    local i = index[name]
    if i then
      local held = submit and slots(i) ~= '' and redis.call('ZSCORE', slots(i), m)
      if held then
        return has_token(i) and i or nil  -- a slot held pins the job to its provider
      end
      if has_token(i) and has_slot(i) then
        if k > 1 then
          redis.call('HSET', routes, m, table.concat(names, ',', k))
        end
        return i
      end
    end
    if not submit then return nil end  -- only a submit may go elsewhere
  end
  return nil
end
local chosen, late = {}, {}
local until_ = now + tonumber(ARGV[1])
if want > 0 then
  -- With several providers, look past jobs that must wait for a full one.
  local window = want
  if limited and n > 1 then window = want + 64 end
  local due = redis.call('ZRANGEBYSCORE', lane, '-inf', now, 'WITHSCORES', 'LIMIT', 0, window)
  for j = 1, #due, 2 do
    if #chosen >= want then break end
    local m = due[j]
    local i = 0
    if limited then i = pick(m) end
    if i then
      if i > 0 then
        if tokens[i] ~= nil then tokens[i] = tokens[i] - 1 end
        if submit and slots(i) ~= '' then
          if redis.call('ZSCORE', slots(i), m) then
            redis.call('ZADD', slots(i), 'GT', until_, m)
          else
            redis.call('ZADD', slots(i), until_, m)
            free[i] = free[i] - 1
          end
        end
      end
      chosen[#chosen + 1] = m
      late[#late + 1] = now - tonumber(due[j + 1])
    elseif n == 1 then
      break  -- one provider, no slot or token: everything due after it waits, in order
    end
  end
end
for i, left in pairs(tokens) do
  redis.call('HSET', bucket(i), 'tokens', tostring(left), 'ts', tostring(now))
  redis.call('EXPIRE', bucket(i), 3600)
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
