"""The pump: claims due schedule entries and hands them to Celery as messages.

Every worker's main process runs one (a bootstep thread); one Lua script per lane makes any
number of them safe together, on any number of hosts. The script, atomically:
1. takes as many due entries as the lane's Celery queue has room for (dispatch_ahead
   messages at most wait there: the rest of the due work waits in the schedule, where a lost
   message costs nothing), in due order; the submit lane's by fair share across tenants and
   by priority within one (lua/claim_submit.lua: polls never wait behind it),
2. spends the shared limits: a rate token per entry of a rate-limited lane, a provider slot
   per submit (and per poll of a job holding none: producer/core/limits.py), and parks the
   entries whose providers are all full (a submit in its tenant's queue),
3. leases each entry (its score moves lease_s ahead and the lease hash notes the claim's
   token; an entry already noted there is a recovery: its last claim never finished),
4. pushes one message per claim: poll_batch_size entries for polls, one for the rest.
A SIGKILL anywhere in or around it leaves entries due or leased, never lost. The script is
producer/core/lua/claim.lua (claim_submit.lua for submits), run through the schedule
(producer/core/schedule.py), which owns every key it writes.

A pass that claims something is followed by another at once, and one that found a lane's
Celery queue full by another after PumpStep.interval_s (the workers drain it). An idle pump
waits longer before the next, and the deployment's pumps share the watch: each waits
PumpStep.interval_s times the number of live pumps (they say so every REGISTER_EVERY_S in a
sorted set), jittered so that they drift apart, up to IDLE_MAX_S. An idle deployment then
asks Redis about 20 times a second whatever its number of workers (before: 20 times a second
per worker, ~640 commands/s each, which made idle pumps the first Redis cost to grow with
workers), and due work still waits ~interval_s for the next pass on average.
"""

from __future__ import annotations

import os
import random
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import bootsteps

from producer.core.limits import ClaimTerms, ProviderLimits
from producer.core.names import LANES, Keys, Lane
from producer.core.schedule import FairTerms, Schedule
from producer.core.settings import Settings
from worker.messages import claim_envelope

log = structlog.get_logger("videoqueue.pump")

# How often a pump says it is alive, and how long one that stopped saying so still counts.
REGISTER_EVERY_S = 2.0
PUMP_TTL_S = 10.0
# The longest an idle pump waits between passes, however many pumps there are.
IDLE_MAX_S = 0.5


def idle_wait_s(interval_s: float, pumps: int, jitter: float) -> float:
    """How long an idle pump waits: interval_s times the live pumps (the deployment still
    passes about once per interval_s), capped at IDLE_MAX_S; jitter in [0.5, 1.5) spreads
    the pumps' passes apart."""
    return min(IDLE_MAX_S, interval_s * max(1, pumps)) * jitter


@dataclass(frozen=True)
class Claimed:
    """What one claim of a lane handed out, and how late (after its due time) it was."""

    entries: int
    lateness_total_s: float
    lateness_max_s: float
    # Its Celery queue held dispatch_ahead messages already: the workers are busy, not idle.
    queue_full: bool = False


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
        self.schedule = Schedule(client, self.keys)
        self.token_prefix = os.urandom(4).hex() + "."
        limits = ProviderLimits(client, settings)
        self._terms: dict[Lane, ClaimTerms] = {lane: limits.claim_terms(lane) for lane in LANES}
        self._fair = FairTerms(settings.fair_share, settings.priority_aging_s)

    def register(self) -> int:
        """Say this pump is alive; returns how many pumps did within PUMP_TTL_S."""
        seconds, micros = self.redis.time()
        now = float(seconds) + micros / 1e6
        key = self.keys.pumps()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.token_prefix: now})
            pipe.zremrangebyscore(key, "-inf", now - PUMP_TTL_S)
            pipe.zcard(key)
            pipe.expire(key, int(PUMP_TTL_S) * 6)
            return int(pipe.execute()[2])

    def unregister(self) -> None:
        """This pump stops: the others need not wait for its entry to lapse."""
        self.redis.zrem(self.keys.pumps(), self.token_prefix)

    def claim_due(self) -> dict[Lane, Claimed]:
        """One pass over every lane, in one round trip; what each lane handed out."""
        s = self.settings
        with self.redis.pipeline(transaction=False) as pipe:
            for lane, terms in self._terms.items():
                queue = lane.queue(s.queue)
                self.schedule.claim(
                    lane,
                    queue=queue,
                    lease_s=s.lease_s,
                    dispatch_ahead=s.dispatch_ahead,
                    per_message=s.poll_batch_size if lane is Lane.POLL else 1,
                    token_prefix=self.token_prefix,
                    envelope=claim_envelope(lane.task, queue),
                    limits=terms,
                    fair=self._fair,
                    client=pipe,
                )
            results = pipe.execute()
        return {
            lane: Claimed(int(n), int(total_ms) / 1000, int(worst_ms) / 1000, bool(full))
            for lane, (n, total_ms, worst_ms, *full) in zip(self._terms, results, strict=True)
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
        pumps, register_at = 1, 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= register_at:
                    register_at = time.monotonic() + REGISTER_EVERY_S
                    pumps = pump.register()
                passed = pump.claim_due()
                metrics.claims(passed)
                claimed = sum(c.entries for c in passed.values())
                busy = any(c.queue_full for c in passed.values())
            except Exception as e:  # noqa: BLE001  (the pump must outlive anything)
                # Once a second, not every tick: an outage should not flood the log.
                if isinstance(e, redis.RedisError):
                    log.warning("pump could not reach Redis", error_type=type(e).__name__)
                else:
                    log.error("pump failed", error_type=type(e).__name__, error=str(e)[:200])
                self._stop.wait(1.0)
                continue
            # Work claimed means more may be due: go again at once; else wait. This wait is
            # the pump thread's, not a task's: no task ever sleeps.
            if claimed:
                continue
            if busy:  # a queue drains as its workers finish: refill it promptly
                self._stop.wait(self.interval_s)
            else:
                self._stop.wait(idle_wait_s(self.interval_s, pumps, random.uniform(0.5, 1.5)))
        with suppress(redis.RedisError):
            pump.unregister()
