"""How long earlier generations took, per model, clip length and size: what the poll
schedule aims at when the provider reports no progress (worker/timing.py); and how often a
provider's callbacks have failed to come (what decides whether its jobs are polled as a
reconciler or as before)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import redis

from producer.core.names import Keys
from worker.timing import usual_generation_s

# Generation times kept per model and shape: enough for a 5th percentile, small in Redis.
KEEP = 100
# A worker re-reads a model's times at most this often: every poll batch would otherwise
# read them again, and one more finished job hardly moves a percentile.
CACHE_S = 30.0
# Times of a model nobody used for this long are forgotten.
TTL_S = 30 * 24 * 3600


def shape_of(request: dict[str, Any]) -> str:
    """What a generation's time depends on: its model, clip length and size."""
    size = request.get("size") or request.get("aspect_ratio") or "-"
    return f"{request.get('model', '-')}|{request.get('duration', '-')}|{size}"


class GenerationTimes:
    """Generation times seen, in Redis (shared by every worker), read through a short cache.

    Args:
        client: the Redis holding job records.
        keys: the deployment's keys.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._cache: dict[str, tuple[float, list[float]]] = {}

    def usual_s(self, request: dict[str, Any]) -> float | None:
        """When to first poll a new job of this shape (None: no history yet)."""
        return usual_generation_s(self._durations(request))

    def late_s(self, request: dict[str, Any]) -> float | None:
        """By when 19 in 20 recent jobs of this shape had ended (None: no history yet)."""
        return usual_generation_s(self._durations(request), quantile=0.95)

    def _durations(self, request: dict[str, Any]) -> list[float]:
        shape = shape_of(request)
        cached = self._cache.get(shape)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        raw = self.redis.lrange(self.keys.durations(shape), 0, -1)
        value = [_float(x) for x in raw]
        self._cache[shape] = (time.monotonic(), value)
        return value

    def record(self, request: dict[str, Any], seconds: float, client: Any = None) -> None:
        """Note one finished generation (on client's transaction, if given)."""
        key = self.keys.durations(shape_of(request))
        c = client or self.redis
        c.lpush(key, f"{seconds:.3f}")
        c.ltrim(key, 0, KEEP - 1)
        c.expire(key, TTL_S)


def _float(raw: bytes | str) -> float:
    try:
        return float(raw)
    except ValueError:
        return -1.0


# Whether a provider's callbacks come is judged on its last this many finished jobs, shared by
# every worker in Redis: a worker process that finished few of them itself (the prefork pool's
# children split the polls unevenly) still knows. In the benchmark, each process judging by
# its own jobs left one child reconciling among 30 % lost callbacks (p95 detection 13.9 s).
LOSS_WINDOW = 50
# A worker re-reads the window at most this often.
LOSS_CACHE_S = 2.0
# Past this share of the window's jobs ending with no callback, a provider's jobs are polled as
# if it could not call back: a lost callback then costs what polling costs, not the
# reconciler's long first wait (issue 20: with 30 % lost, p95 detection no worse than polling).
# They go back to the reconciler once the share is under LOSS_RECOVERED: the gap keeps a share
# near either from flapping, and the reconciler's own early finds (about 1 job in 20 ends
# after its first poll, before its callback) from switching a healthy provider to polling.
LOSS_TOLERATED = 0.15
LOSS_RECOVERED = 0.05


class CallbackLoss:
    """Per provider, the share of its last LOSS_WINDOW finished jobs whose end no callback
    announced (in Redis, shared by every worker; in this process only, without a client).

    Args:
        client: the Redis holding job records (None: kept in this process).
        keys: the deployment's keys.
    """

    def __init__(self, client: redis.Redis | None = None, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys
        self._local: dict[str, deque[bool]] = {}
        self._cache: dict[str, tuple[float, float]] = {}
        self._polled: set[str] = set()

    def saw(self, provider: str, called_back: bool, client: Any = None) -> None:
        """One job of provider was found ended, after its callback or without one (on
        client's transaction, if given)."""
        if self.redis is None or self.keys is None:
            window = self._local.setdefault(provider, deque(maxlen=LOSS_WINDOW))
            window.append(not called_back)
            return
        key = self.keys.callback_outcomes(provider)
        c = client or self.redis
        c.lpush(key, "0" if called_back else "1")
        c.ltrim(key, 0, LOSS_WINDOW - 1)
        c.expire(key, TTL_S)

    def share(self, provider: str) -> float:
        """The share of the window's jobs that ended with no callback (0 with none yet)."""
        if self.redis is None or self.keys is None:
            window = self._local.get(provider) or deque()
            return sum(window) / len(window) if window else 0.0
        cached = self._cache.get(provider)
        if cached is not None and time.monotonic() - cached[0] < LOSS_CACHE_S:
            return cached[1]
        raw = self.redis.lrange(self.keys.callback_outcomes(provider), 0, -1)
        share = sum(1 for x in raw if x in (b"1", "1")) / len(raw) if raw else 0.0
        self._cache[provider] = (time.monotonic(), share)
        return share

    def too_high(self, provider: str) -> bool:
        """Whether so many of provider's callbacks go missing that its jobs are polled."""
        share = self.share(provider)
        if share > LOSS_TOLERATED:
            self._polled.add(provider)
        elif share < LOSS_RECOVERED:
            self._polled.discard(provider)
        return provider in self._polled
