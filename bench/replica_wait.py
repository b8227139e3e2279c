"""The cost of VIDEOQUEUE_REDIS_WAIT_REPLICAS: a job update (the shape of the pin to a provider
before a create) alone, and followed by JobStore.wait_for_replicas (a fence write and Redis WAIT)
for one and for two replicas, on a Sentinel deployment of three redis-servers on loopback
(ops/sentinel.py).

    python -m bench.replica_wait [updates per round, default 1000]

Prints the median and p99 of each round in ms (the figures in the README's "Redis Sentinel").
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from ops.sentinel import sentinel_cluster
from producer.core.records import JobRecord
from producer.core.settings import Settings
from producer.core.store import store
from producer.jobs import enqueue


def _bump(record: JobRecord) -> bool:
    record.attempts += 1
    return True


def main(rounds: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp, sentinel_cluster(Path(tmp)) as cluster:
        settings = Settings(broker_url=cluster.url, key_prefix="replica-wait", queue="replica-wait")
        st = store(settings)
        request = {"model": "sora", "prompt": "a cat", "size": "64x48", "duration": 2}
        job_id = enqueue(request, settings=settings)
        for label, replicas in (("no wait", 0), ("WAIT 1", 1), ("WAIT 2", 2), ("no wait", 0)):
            times_ms = []
            for _ in range(rounds):
                started = time.perf_counter()
                st.update(job_id, _bump)
                if replicas and st.wait_for_replicas(replicas, 500) < replicas:
                    raise SystemExit(f"{label}: a replica did not acknowledge within 500 ms")
                times_ms.append((time.perf_counter() - started) * 1000)
            times_ms.sort()
            p99 = times_ms[int(len(times_ms) * 0.99)]
            print(f"{label}: median {statistics.median(times_ms):.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
