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

# KEYS: lane, leases, queue, claim counter, slots ('' none), rate bucket ('' none).
# ARGV: lease_s, dispatch_ahead, entries per message, token prefix, slot cap, rate, burst,
# the lane's name, then the six pieces of the message envelope. Returns the entries claimed,
# their total and their worst lateness in milliseconds.
_CLAIM = """
pcall(redis.replicate_commands)  -- Redis < 7 needs it for TIME before writes
local lane, leases, queue, seq, slots, bucket = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local room = tonumber(ARGV[2]) - redis.call('LLEN', queue)
if room <= 0 then return {0, 0, 0} end
local per = tonumber(ARGV[3])
local want = room * per
local tokens
if bucket ~= '' then
  local rate, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
  tokens = tonumber(redis.call('HGET', bucket, 'tokens') or burst)
  local since = tonumber(redis.call('HGET', bucket, 'ts') or now)
  tokens = math.min(burst, tokens + math.max(0, now - since) * rate)
  want = math.min(want, math.floor(tokens))
end
local chosen, late = {}, {}
local until_ = now + tonumber(ARGV[1])
if want > 0 and slots ~= '' then
  -- A slot taken for a submit is held under the claim's lease (extended while the submit
  -- runs, pushed far ahead once the provider has the job): a dead claim's slot frees itself.
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local free = tonumber(ARGV[5]) - redis.call('ZCARD', slots)
  local due = redis.call('ZRANGEBYSCORE', lane, '-inf', now, 'WITHSCORES', 'LIMIT', 0, want)
  for i = 1, #due, 2 do
    local m = due[i]
    if redis.call('ZSCORE', slots, m) then
      redis.call('ZADD', slots, 'GT', until_, m)
    elseif free > 0 then
      redis.call('ZADD', slots, until_, m)
      free = free - 1
    else
      break  -- no slot: it and everything due after it wait in the lane, in order
    end
    chosen[#chosen + 1] = m
    late[#late + 1] = now - tonumber(due[i + 1])
  end
elseif want > 0 then
  local due = redis.call('ZRANGEBYSCORE', lane, '-inf', now, 'WITHSCORES', 'LIMIT', 0, want)
  for i = 1, #due, 2 do
    chosen[#chosen + 1] = due[i]
    late[#late + 1] = now - tonumber(due[i + 1])
  end
end
if bucket ~= '' then
  redis.call('HSET', bucket, 'tokens', tostring(tokens - #chosen), 'ts', tostring(now))
  redis.call('EXPIRE', bucket, 3600)
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
    .. cjson.encode(ARGV[8]) .. ',[' .. table.concat(recovered, ',') .. ']],{},'
    .. '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
  redis.call('LPUSH', queue, ARGV[9] .. cjson.encode(body) .. ARGV[10] .. token .. ARGV[11]
    .. token .. ARGV[12] .. token .. ARGV[13] .. token .. ARGV[14])
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
        args = [s.lease_s, s.dispatch_ahead, per, self.token_prefix, *limit_args, lane.value,
                *claim_envelope(lane.task, queue)]  # fmt: skip
        return keys + limit_keys, args

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
