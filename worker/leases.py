"""The lease a running step holds on its schedule entries.

A claim (worker/pump.py) leases entries for lease_s; while the step runs, a heartbeat thread
extends the lease every third of that, so a long step (a big file copy, a slow provider)
keeps its entries however long it takes, up to step_timeout_s. When the worker dies the
heartbeat dies with it, and the entries come due again within lease_s. The lease hash and the
lanes are the schedule's (producer/core/schedule.py): this module only asks it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis
import structlog

from producer.core.names import Lane
from producer.core.schedule import Schedule

log = structlog.get_logger("videoqueue.leases")


class Lease:
    """One claim's hold on its entries.

    Args:
        schedule: the schedule the entries are in.
        lane: the lane the entries were claimed from.
        token: the claim's token.
        slots: every account's provider slots (sorted sets).
    """

    def __init__(self, schedule: Schedule, lane: Lane, token: str, slots: Sequence[str]) -> None:
        self.schedule = schedule
        self.lane = lane
        self.token = token
        self.slots = list(slots)

    def held(self, members: Sequence[str]) -> list[str]:
        """The members this claim still holds: a message redelivered after a newer claim
        took its entries holds none, and its step must do nothing."""
        if not members:
            return []
        tokens = self.schedule.holders(members)
        mine = self.token.encode()
        return [m for m, t in zip(members, tokens, strict=True) if t == mine]

    def extend(self, members: Sequence[str], lease_s: float) -> int:
        """Push the members' entries lease_s ahead; returns how many are still held."""
        return self.schedule.extend(self.lane, self.token, members, lease_s, self.slots)

    @contextmanager
    def heartbeat(self, members: Sequence[str], lease_s: float, max_s: float) -> Iterator[None]:
        """Keep the lease alive while the block runs (at most max_s)."""
        stop = threading.Event()

        def beat() -> None:
            ends_at = time.monotonic() + max_s
            while not stop.wait(lease_s / 3) and time.monotonic() < ends_at:
                try:
                    if not self.extend(members, lease_s):
                        return  # every entry placed or taken over: nothing left to hold
                except redis.RedisError as e:
                    log.warning("could not extend a lease", error=str(e))

        # In the step's log context (its job's id): a thread starts with none.
        beat_here = contextvars.copy_context().run
        thread = threading.Thread(target=beat_here, args=(beat,), name="videoqueue-lease",
                                  daemon=True)  # fmt: skip
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
