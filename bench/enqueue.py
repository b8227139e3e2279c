"""Scenario 5 (issue 4), enqueue: how fast a backend can hand jobs over, and at what memory.

10,000 valid requests are enqueued, five times, by each of:

- ``producer.enqueue_batch`` (when the producer has it): one call for all of them;
- ``producer.enqueue``, one call per request;
- plain Celery ``apply_async`` of a no-op task, one call per task (what a naive producer does);
- raw pipelined Redis ``LPUSH`` of the same task messages, 1,000 per round trip (the floor).

Runs are interleaved (one of each, five times) on the same Redis, and the median rate of
each is reported. Nothing consumes these messages: they go to a queue no worker listens on,
which is deleted after every run.

Memory: ``enqueue_batch`` of 100,000 requests in a fresh process
(``python -m bench.enqueue rss N``), whose peak RSS (``ru_maxrss``) is reported, the
request list included.
"""

from __future__ import annotations

import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import producer
from bench.harness import Services, log, purge
from bench.model import Row, ScenarioResult
from producer.core import names
from producer.core.settings import Settings
from producer.core.store import store
from worker.messages import task_message

NAME = "enqueue"
MB = 1e6
LPUSH_PIPELINE = 1000


@dataclass(frozen=True)
class Scale:
    """How big the scenario runs.

    Attributes:
        jobs: Requests per run.
        runs: Runs of each method (the median is reported).
        rss_jobs: Requests in the enqueue_batch memory run.
    """

    jobs: int
    runs: int
    rss_jobs: int


FULL = Scale(jobs=10_000, runs=5, rss_jobs=100_000)
SMOKE = Scale(jobs=300, runs=3, rss_jobs=2_000)


def requests(n: int) -> list[dict[str, Any]]:
    """n valid, distinct requests, shaped like a campaign's."""
    return [
        {
            "model": "sora",
            "prompt": f"campaign clip {i}: a fox in the snow",
            "size": "1280x720",
            "duration": 4,
            "webhook_url": "https://backend.example/hooks/video",
            "metadata": {"campaign": "bench", "n": str(i)},
        }
        for i in range(n)
    ]


def has_batch() -> bool:
    """Whether this producer has enqueue_batch (issue 4)."""
    return callable(getattr(producer, "enqueue_batch", None))


def _settings(services: Services, name: str) -> Settings:
    return Settings(broker_url=services.redis_url, key_prefix=name, queue=name)


def _batch(reqs: list[dict[str, Any]], settings: Settings) -> str:
    fn = producer.enqueue_batch  # type: ignore[attr-defined]
    if "settings" in inspect.signature(fn).parameters:
        return str(fn(reqs, settings=settings))
    raise RuntimeError("enqueue_batch takes no settings: cannot aim it at a throwaway queue")


def run(services: Services, scale: Scale) -> ScenarioResult:
    """Run the scenario at scale and return its rows, notes and chart data."""
    from celery import Celery

    result = ScenarioResult(
        name=NAME,
        title="Enqueue: 10,000 valid requests",
        smoke=services.smoke,
        params={**asdict(scale), "enqueue_batch": has_batch(), "lpush_pipeline": LPUSH_PIPELINE},
    )
    name = f"vqbench-{NAME}-{uuid.uuid4().hex[:8]}"
    settings = _settings(services, name)
    reqs = requests(scale.jobs)
    app = Celery("vqbench-noop", broker=services.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=name,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="vqbench.noop")
    def noop(i: int) -> None:
        """Does nothing: only its enqueue is measured."""

    client = store(settings).redis
    messages = [
        task_message(names.SUBMIT, [f"job_{uuid.uuid4().hex}"], name) for _ in range(scale.jobs)
    ]

    def lpush() -> None:
        for start in range(0, len(messages), LPUSH_PIPELINE):
            pipe = client.pipeline(transaction=False)
            for message in messages[start : start + LPUSH_PIPELINE]:
                pipe.lpush(name, message)
            pipe.execute()

    def apply_async() -> None:
        for i in range(scale.jobs):
            noop.apply_async(args=[i], queue=name)

    def one_by_one() -> None:
        for r in reqs:
            producer.enqueue(r, settings=settings)

    methods: dict[str, Callable[[], Any]] = {
        "lpush": lpush,
        "apply_async": apply_async,
        "enqueue": one_by_one,
    }
    if has_batch():
        methods["enqueue_batch"] = lambda: _batch(reqs, settings)
    rates: dict[str, list[float]] = {m: [] for m in methods}
    try:
        # One call of each first, so that connecting and imports are not timed.
        noop.apply_async(args=[0], queue=name)
        producer.enqueue(reqs[0], settings=settings)
        purge(services.redis_url, name)
        for i in range(scale.runs):
            for method, call in methods.items():
                start = time.perf_counter()
                call()
                rates[method].append(scale.jobs / (time.perf_counter() - start))
                purge(services.redis_url, name)
            log(
                f"{NAME}: run {i + 1}/{scale.runs}: "
                + ", ".join(f"{m} {r[-1]:,.0f}/s" for m, r in rates.items())
            )
        rss = _batch_rss(services, scale.rss_jobs) if has_batch() else None
    finally:
        app.pool.force_close_all()
        purge(services.redis_url, name)

    median = {m: statistics.median(r) for m, r in rates.items()}
    result.params["rates_per_s"] = {m: [round(x) for x in r] for m, r in rates.items()}
    n = f"{scale.jobs:,} requests, median of {scale.runs}"
    if has_batch():
        result.rows.append(
            Row(
                NAME,
                f"enqueue_batch ({n})",
                median["enqueue_batch"],
                "jobs/s",
                median["apply_async"],
                "Celery apply_async, one at a time",
                ">= 20,000 jobs/s",
                median["enqueue_batch"] >= 20_000,
            )
        )
    result.rows += [
        Row(
            NAME,
            f"enqueue, one at a time ({n})",
            median["enqueue"],
            "jobs/s",
            median["apply_async"],
            "Celery apply_async, one at a time",
        ),
        Row(NAME, f"raw pipelined LPUSH, the floor ({n})", median["lpush"], "jobs/s"),
    ]
    if has_batch() and rss is not None:
        result.rows.append(
            Row(
                NAME,
                f"producer peak RSS, enqueue_batch of {scale.rss_jobs:,} requests",
                rss["peak_rss_bytes"] / MB,
                "MB",
                None,
                "",
                "< 300 MB",
                rss["peak_rss_bytes"] < 300 * MB,
            )
        )
        result.params["batch_rss"] = rss
    result.series = {"rates_per_s": result.params["rates_per_s"]}
    result.notes.append(
        "Every method runs against the same Redis in the same process, interleaved, each "
        f"run timed from the first call to the last answer. `enqueue` validates each "
        "request and writes its record and first message in one Lua script (one round "
        "trip per job); Celery's `apply_async` builds and publishes a message per call; "
        f"raw `LPUSH` sends prebuilt messages {LPUSH_PIPELINE:,} per round trip, writing no "
        "job record at all."
        + (
            " `enqueue_batch` validates every request first, then writes records and messages "
            "in chunks of one Lua script each."
            if has_batch()
            else " This producer has no `enqueue_batch` yet: its rows are missing."
        )
    )
    return result


def _batch_rss(services: Services, jobs: int) -> dict[str, Any]:
    """Peak RSS of a fresh process that enqueues one batch of `jobs` requests."""
    name = f"vqbench-{NAME}-rss-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "VIDEOQUEUE_BROKER_URL": services.redis_url,
        "VIDEOQUEUE_KEY_PREFIX": name,
        "VIDEOQUEUE_QUEUE": name,
    }
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.enqueue", "rss", str(jobs)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).resolve().parents[1],
            check=False,
        )
    finally:
        purge(services.redis_url, name)
    if out.returncode != 0:
        raise RuntimeError(f"enqueue_batch memory run failed: {out.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"{NAME}: enqueue_batch of {jobs:,}: peak RSS {figures['peak_rss_bytes'] / MB:.0f} MB")
    return figures


def _rss_child(jobs: int) -> dict[str, Any]:
    """In the child: build the requests, enqueue them as one batch, report memory."""
    import psutil

    me = psutil.Process()
    baseline = me.memory_info().rss
    reqs = requests(jobs)
    before = me.memory_info().rss
    start = time.perf_counter()
    _batch(reqs, Settings())
    elapsed_s = time.perf_counter() - start
    # ru_maxrss is the kernel's high-water mark of this process, in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "jobs": jobs,
        "rss_after_import_bytes": baseline,
        "rss_with_requests_bytes": before,
        "peak_rss_bytes": peak,
        "enqueue_batch_s": round(elapsed_s, 3),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "rss":
        print(json.dumps(_rss_child(int(sys.argv[2]))))
    else:
        sys.exit("usage: python -m bench.enqueue rss N")
