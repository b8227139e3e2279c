"""Scenario console (issue 21): the console's job list and its filters, with 100,000 jobs in
Redis.

The jobs are written as the store's create script writes them (each record, the job index
and its tenant's index, scored by enqueue time over the last day), with no schedule entries:
nothing runs them. 10 tenants, 3 providers, 2 models, 1 in 50 failed (half of them
`download_failed`), a metadata value unique to each job. Then each listing is asked for
through the console's own route (`GET /console/jobs`, rendered HTML, an admin's session) by
an in-process client, `requests` times each, and its p95 is reported against the issue's
goal of 300 ms. Every page reads at most SCAN_WINDOW index entries (producer/core/scan.py):
a rare match costs a full window, never the whole index.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import Services, log, purge
from bench.model import Row, ScenarioResult
from producer.core.keys import create_key
from producer.core.records import ErrorInfo, JobRecord, JobStatus
from producer.core.scan import SCAN_WINDOW
from producer.core.settings import Settings
from producer.core.store import store

NAME = "console"
GOAL_MS = 300.0
WRITE_CHUNK = 2000


@dataclass(frozen=True)
class Scale:
    """How big the scenario runs.

    Attributes:
        jobs: Job records in Redis.
        requests: Requests timed per listing.
    """

    jobs: int
    requests: int


FULL = Scale(jobs=100_000, requests=60)
SMOKE = Scale(jobs=2_000, requests=8)

# The listings timed: (label, query string). An hour's failed downloads is the bulk retry's
# filter; a metadata value held by one job is the rarest match (a full window each page).
CASES = [
    ("first page, no filter", ""),
    ("status=failed", "status=failed"),
    ("failed download_failed, last hour", "status=failed&error=download_failed&within=1h"),
    ("tenant", "tenant=t3"),
    ("tenant + status + model", "tenant=t3&status=completed&model=sora-2"),
    ("provider", "provider=p1"),
    ("metadata key=value (one job)", "meta_key=n&meta_value=7"),
    ("last 15 min", "within=15m"),
]


def _record(i: int, jobs: int, now_s: float, span_s: float) -> tuple[JobRecord, float]:
    created_s = now_s - span_s + span_s * (i + 1) / jobs  # the last one is the newest
    status = JobStatus.COMPLETED if i % 3 else JobStatus.PROCESSING
    error = None
    if i % 50 == 0:
        status = JobStatus.FAILED
        code = "download_failed" if i % 100 == 0 else "timeout"
        error = ErrorInfo(code=code, message="bench")
    iso = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(created_s))
    record = JobRecord(
        id=f"job_{uuid.uuid4().hex}",
        request={"model": "sora-2" if i % 4 == 0 else "sora", "prompt": f"clip {i}",
                 "size": "1280x720", "duration": 4},
        metadata={"campaign": "bench", "n": str(i)},
        status=status, error=error, tenant=f"t{i % 10}", provider=f"p{i % 3}",
        created_at=iso, updated_at=iso, progress=100 if i % 3 else 40,
    )  # fmt: skip
    return record, created_s


def _fill(settings: Settings, jobs: int) -> None:
    st = store(settings)
    keys = st.keys
    now_s = time.time()
    for start in range(0, jobs, WRITE_CHUNK):
        with st.redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + WRITE_CHUNK, jobs)):
                record, created_s = _record(i, jobs, now_s, 86400.0)
                pipe.set(keys.job(record.id), record.model_dump_json())
                pipe.zadd(keys.job_index(), {record.id: created_s})
                pipe.zadd(keys.tenant_job_index(record.tenant), {record.id: created_s})
            pipe.execute()


def _signed_in(settings: Settings) -> Any:
    from fastapi.testclient import TestClient

    from producer.http.app import create_app

    _, secret = create_key("ops", admin=True, settings=settings)
    client = TestClient(create_app(settings), base_url="http://127.0.0.1")
    form = client.get("/console/signin").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    client.post("/console/signin", data={"key": secret, "csrf": csrf.group(1)})
    return client


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def run(services: Services, scale: Scale) -> ScenarioResult:
    """Fill Redis with scale.jobs records, time each listing, and report its p95."""
    result = ScenarioResult(
        name=NAME,
        title=f"Console: job list and filters, {scale.jobs:,} jobs in Redis",
        smoke=services.smoke,
        params={**asdict(scale), "scan_window": SCAN_WINDOW},
    )
    name = f"vqbench-{NAME}-{uuid.uuid4().hex[:8]}"
    settings = Settings(broker_url=services.redis_url, key_prefix=name, queue=name)
    try:
        started = time.monotonic()
        _fill(settings, scale.jobs)
        log(f"{NAME}: {scale.jobs} jobs written in {time.monotonic() - started:.0f} s")
        client = _signed_in(settings)
        timings: dict[str, list[float]] = {}
        for label, query in CASES:
            samples = timings.setdefault(label, [])
            for _ in range(scale.requests):
                t0 = time.perf_counter()
                answer = client.get(f"/console/jobs?{query}")
                samples.append((time.perf_counter() - t0) * 1000)
                assert answer.status_code == 200, answer.status_code
            shown = re.search(r"Showing (\d+) matching of (\d+) scanned", answer.text)
            result.series[label] = {"ms": samples, "shown": shown.groups() if shown else None}
        # A later page of the whole list, by the cursor its "Next page" link carries.
        first = client.get("/console/jobs").text
        cursor = re.search(r'href="(/console/jobs\?cursor=[^"]+)"', first)
        assert cursor is not None
        samples = timings.setdefault("second page (cursor)", [])
        for _ in range(scale.requests):
            t0 = time.perf_counter()
            assert client.get(cursor.group(1).replace("&amp;", "&")).status_code == 200
            samples.append((time.perf_counter() - t0) * 1000)
        result.series["second page (cursor)"] = {"ms": samples, "shown": None}
        for label, row in timings.items():
            result.rows.append(_row(scale, label, row))
        result.notes = notes(result)
    finally:
        purge(services.redis_url, name)
    return result


def _row(scale: Scale, label: str, samples: list[float]) -> Row:
    p95 = _p95(samples)
    return Row(
        scenario=NAME, metric=f"list p95, {scale.jobs:,} jobs: {label}", ours=round(p95, 1),
        unit="ms", goal=f"< {GOAL_MS:g} ms", met=p95 < GOAL_MS,
    )  # fmt: skip


def rows(result: ScenarioResult) -> list[Row]:
    scale = Scale(**{k: result.params[k] for k in ("jobs", "requests")})
    return [_row(scale, label, data["ms"]) for label, data in result.series.items()]


def notes(result: ScenarioResult) -> list[str]:
    lines = [
        f"Each listing asked {result.params['requests']} times through `GET /console/jobs` "
        "(rendered HTML, 50 jobs a page, an admin's session checked on each request) by an "
        "in-process client; p50 / p95 in ms and what the page showed (matching of scanned):"
    ]
    for label, data in result.series.items():
        ms = data["ms"]
        shown = data.get("shown")
        seen = f", showed {shown[0]} of {shown[1]} scanned" if shown else ""
        lines.append(f"- {label}: p50 {statistics.median(ms):.1f}, p95 {_p95(ms):.1f}{seen}")
    lines.append(
        "A page reads at most the scan window of index entries (the tenant's own index for a "
        "tenant, the score range for a time window), so a rare match costs one window, and the "
        "next page goes on from where the scan stopped."
    )
    return ["\n".join(lines)]
