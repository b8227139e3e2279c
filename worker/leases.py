"""The lease a running step holds on its schedule entries.

A claim (worker/pump.py) leases entries for lease_s; while the step runs, a heartbeat thread
extends the lease every third of that, so a long step (a big file copy, a slow provider)
keeps its entries however long it takes, up to step_timeout_s. When the worker dies the
heartbeat dies with it, and the entries come due again within lease_s.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis
import structlog

from producer.core.names import Keys, Lane

log = structlog.get_logger("videoqueue.leases")

# KEYS: lane, leases, every account's slots. ARGV: lease_s, token, members... Extends the
# members still held by this token (a member the step already placed elsewhere is no longer
# held), and the provider slot a submit holds under its lease (never shortening a
# generation's), wherever it is held.
_EXTEND = """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local n = 0
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', 'GT', until_, ARGV[i])
    for k = 3, #KEYS do redis.call('ZADD', KEYS[k], 'XX', 'GT', until_, ARGV[i]) end
    n = n + 1
  end
end
return n
"""


class Lease:
    """One claim's hold on its entries.

    Args:
        client: the Redis holding the schedule.
        keys: the deployment's keys.
        lane: the lane the entries were claimed from.
        token: the claim's token.
        slots: every account's provider slots (sorted sets).
    """

    def __init__(
        self, client: redis.Redis, keys: Keys, lane: Lane, token: str, slots: Sequence[str]
    ) -> None:
        self.redis = client
        self.keys = keys
        self.lane = lane
        self.token = token
        self.slots = list(slots)
        self._extend = client.register_script(_EXTEND)

    def held(self, members: Sequence[str]) -> list[str]:
        """The members this claim still holds: a message redelivered after a newer claim
        took its entries holds none, and its step must do nothing."""
        if not members:
            return []
        tokens = self.redis.hmget(self.keys.leases(), list(members))
        mine = self.token.encode()
        return [m for m, t in zip(members, tokens, strict=True) if t == mine]

    def extend(self, members: Sequence[str], lease_s: float) -> int:
        """Push the members' entries lease_s ahead; returns how many are still held."""
        return int(
            self._extend(
                keys=[self.keys.schedule(self.lane), self.keys.leases(), *self.slots],
                args=[lease_s, self.token, *members],
            )
        )

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
