"""How long earlier generations took, per model, clip length and size: what the poll
schedule aims at when the provider reports no progress (worker/timing.py)."""

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
        self._cache: dict[str, tuple[float, float | None]] = {}

    def usual_s(self, request: dict[str, Any]) -> float | None:
        """When to first poll a new job of this shape (None: no history yet)."""
        shape = shape_of(request)
        cached = self._cache.get(shape)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        raw = self.redis.lrange(self.keys.durations(shape), 0, -1)
        value = usual_generation_s([_float(x) for x in raw])
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
