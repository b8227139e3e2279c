"""The pumps of a deployment share the watch: each says it is alive in Redis, so that idle
pumps space their passes by how many there are (worker/pump.py)."""

from __future__ import annotations

import pytest
import redis

from producer import JobStatus, enqueue, wait
from producer.core.names import Keys
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.e2e


def test_each_worker_counts_itself_among_the_pumps_and_a_stopped_one_leaves_at_once(
    make_pipeline,
):
    p = make_pipeline(workers=2)
    client = redis.Redis.from_url(p.settings.broker_url)
    key = Keys(p.settings.key_prefix).pumps()
    eventually(lambda: client.zcard(key) == 2, 30, every_s=0.1)
    # Jobs still move promptly with the watch shared.
    record = wait(enqueue(p.request(), settings=p.settings), 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    p.workers[0].stop()
    # Unregistered as it stops, not PUMP_TTL_S later.
    eventually(lambda: client.zcard(key) == 1, 5, every_s=0.1)
    client.close()
