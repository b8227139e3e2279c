"""How long earlier generations took, per model, clip length and size: what the poll
schedule aims at when the provider reports no progress (worker/timing.py); and how often a
provider's callbacks have failed to come (what decides whether its jobs are polled as a
reconciler or as before)."""

from __future__ import annotations

import time
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


# How fast the share of missing callbacks follows what the polls see (per finished job): slow
# enough that a run of delivered callbacks among 30 % lost does not swing it back (at 0.1, a
# dozen in a row did, and the jobs placed meanwhile waited out the reconciler: p95 16 s in the
# benchmark), and that the reconciler's own early finds (about 1 job in 20 ends after its
# first poll, before its callback) do not switch a healthy provider to polling (simulated:
# 1.5 % of the time at these values; 99 % of the time with 30 % lost). A provider whose
# callbacks stop altogether is noticed within 6 finished jobs per worker process.
LOSS_WEIGHT = 0.03
# Past this share of finished jobs whose callback did not come, a provider's jobs are polled
# as if it could not call back: a lost callback then costs what polling costs, not the
# reconciler's long first wait (issue 20: with 30 % lost, p95 detection no worse than polling).
# They go back to the reconciler once the share is under LOSS_RECOVERED (the gap between the
# two keeps a share near either from flapping).
LOSS_TOLERATED = 0.15
LOSS_RECOVERED = 0.05


class CallbackLoss:
    """Per provider, the share of recently finished jobs whose end no callback announced (an
    exponentially weighted average, kept in this process: each worker learns it from the
    polls it runs)."""

    def __init__(self) -> None:
        self._share: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self._polled: set[str] = set()

    def saw(self, provider: str, called_back: bool) -> None:
        """One job of provider was found ended, after its callback or without one."""
        share = self._share.get(provider, 0.0)
        seen = self._seen[provider] = self._seen.get(provider, 0) + 1
        # The plain average of the first 1/LOSS_WEIGHT jobs, then the moving one: a worker
        # that starts among lost callbacks knows it after a few jobs, not after dozens (in
        # the benchmark, 22 jobs per worker process at 0.03 from the start were not enough).
        weight = max(LOSS_WEIGHT, 1.0 / seen)
        share += weight * ((0.0 if called_back else 1.0) - share)
        self._share[provider] = share
        if share > LOSS_TOLERATED:
            self._polled.add(provider)
        elif share < LOSS_RECOVERED:
            self._polled.discard(provider)

    def too_high(self, provider: str) -> bool:
        """Whether so many of provider's callbacks go missing that its jobs are polled."""
        return provider in self._polled
