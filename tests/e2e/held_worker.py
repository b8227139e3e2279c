"""`celery -A tests.e2e.held_worker worker`: the product's worker, held at one line.

A submit reads its job's route (``ProviderLimits.route``) after its step loaded the record and
before it pins the provider and sends the create. Here that read first touches
``$VQTEST_HOLD_DIR/<job id>.held`` and waits (up to 30 s) for ``<job id>.go``, so that a test
can act in that window (cancel the job) deterministically. Product code is unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from producer.core.limits import ProviderLimits
from worker import app

celery = app

__all__ = ["app", "celery"]

_HOLD_S = 30.0
_route = ProviderLimits.route


def _held_route(self: ProviderLimits, job_id: str) -> list[str] | None:
    hold = Path(os.environ["VQTEST_HOLD_DIR"])
    (hold / f"{job_id}.held").touch()
    deadline = time.monotonic() + _HOLD_S
    while not (hold / f"{job_id}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return _route(self, job_id)


ProviderLimits.route = _held_route  # type: ignore[method-assign]
