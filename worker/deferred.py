"""Deferred tasks in Redis: a sorted set of messages by due time, moved to the queue when due.

Celery's countdown/ETA tasks on the Redis broker are fetched at once and held in the
memory of whichever worker took them, unacknowledged, until they are due. At 10,000 jobs
in flight that is 10,000 messages in one worker's memory; a SIGKILLed worker's waits come
back only after the visibility timeout; and a wait longer than that timeout is redelivered
while it still waits. Here a wait costs one sorted-set entry in Redis instead, and every
worker's pump (a thread in its main process, see DeferredPump) moves due messages onto the
queue with one Lua script: atomic, so two pumps on two hosts never move one message twice,
and nothing is lost between the set and the queue.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from celery import bootsteps

from producer.messages import task_message
from producer.names import Keys

log = structlog.get_logger("videoqueue.deferred")

# KEYS: schedule (zset: id -> due time), messages (hash: id -> queue \x1f message).
# ARGV: how many at most. Moves every due message to its queue; returns how many it moved.
_MOVE_DUE = """
pcall(redis.replicate_commands)  -- Redis < 7 needs it for TIME before writes
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    local sep = string.find(entry, '\\31', 1, true)
    redis.call('LPUSH', string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1))
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
return #due
"""


class Deferred:
    """Schedules task messages for later and moves them to their queue when due.

    Args:
        client: the Redis holding job records (the broker's, by default).
        keys: the deployment's keys.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.schedule = keys.deferred()
        self.messages = keys.deferred_messages()
        self._move_due = client.register_script(_MOVE_DUE)

    def defer(
        self, name: str, args: list[Any], kwargs: dict[str, Any], queue: str, due_at: float
    ) -> None:
        """Queue task `name` at epoch time due_at (Redis's clock decides when it is due)."""
        eta = datetime.fromtimestamp(due_at, UTC).isoformat()
        message = task_message(name, args, queue, kwargs=kwargs, eta=eta)
        entry_id = os.urandom(16).hex()
        with self.redis.pipeline() as pipe:
            pipe.hset(self.messages, entry_id, f"{queue}\x1f{message}")
            pipe.zadd(self.schedule, {entry_id: due_at})
            pipe.execute()

    def move_due(self, limit: int = 500) -> int:
        """Move up to limit due messages to their queues; returns how many."""
        return int(self._move_due(keys=[self.schedule, self.messages], args=[limit]))

    def pending(self) -> int:
        return int(self.redis.zcard(self.schedule))


class DeferredPump(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep: a thread in the worker's main process that moves due deferred
    messages to their queues every interval. Every worker runs one; the Lua script makes
    them safe together, and any one of them keeps every job moving."""

    requires = {"celery.worker.components:Pool"}
    interval_s = 0.05
    batch = 500

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
        from worker.runtime import runtime

        deferred = runtime().deferred
        while not self._stop.is_set():
            try:
                moved = deferred.move_due(self.batch)
            except redis.RedisError as e:
                log.warning("pump could not reach Redis", error=str(e))
                moved = 0
            # A full batch means more are due: go again at once; else wait a tick. This
            # wait is the pump thread's, not a task's: no task ever sleeps.
            if moved < self.batch:
                self._stop.wait(self.interval_s)
