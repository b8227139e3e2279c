"""How the routes call the producer's verbs, which are synchronous (redis-py).

A verb that makes a few round trips to Redis (a key's check and rate token, an enqueue and
its read-back, a read, a page, a cancel) runs on the event loop itself: measured on this
project's 2-core host, a trip to the thread pool and back cost more than the Redis calls, and
queued under load (50 concurrent creates through one process: p50 129 ms and 343/s through
the pool; 2 ms and 419/s on the loop). CPU is spread with uvicorn's `--workers`, not
threads. A create is two round trips (producer/core/keys.py admit: the key and its rate
token in one script; then the create script, whose record is the answer: no read-back).
So that a Redis which stops answering cannot hold the loop, the service's Redis connections
time out (REDIS_TIMEOUT_S): a 503, like an unreachable one.

Anything that can take longer (a batch's validation and writing, a provider call, S3) goes
to the thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from producer.core.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")
# The longest the service waits on Redis for one call (connect, or an answer).
REDIS_TIMEOUT_S = 5.0


async def on_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """fn's result, called on the event loop: for a few quick round trips to Redis."""
    return fn(*args, **kwargs)


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """fn's result, called in the thread pool: for anything that may take a while."""
    return await run_in_threadpool(fn, *args, **kwargs)


def with_redis_timeouts(settings: Settings, timeout_s: float = REDIS_TIMEOUT_S) -> Settings:
    """settings whose Redis calls (records and keys, direct or through Sentinel) give up
    after timeout_s, unless VIDEOQUEUE_REDIS_TIMEOUT_S (or a redis:// URL's own
    socket_timeout=) says otherwise."""
    if settings.redis_timeout_s is not None:
        return settings
    return settings.model_copy(update={"redis_timeout_s": timeout_s})
