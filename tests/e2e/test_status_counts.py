"""`videoqueue_jobs{status}` (read_stats().jobs) counts what the records say, after a finished
record expires and for a staged batch never released, through a real Redis without workers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from producer.core.records import JobRecord, JobStatus, utcnow_iso
from producer.core.requests import parse_request
from producer.core.settings import Settings
from producer.core.stats import read_stats
from producer.core.store import JobStore, NewJob
from producer.jobs import new_record
from tests.e2e.conftest import eventually, fresh_prefix

RECORD_TTL_S = 1.0


@pytest.fixture
def deployment(redis_url: str) -> Iterator[tuple[Settings, JobStore]]:
    prefix = fresh_prefix()
    settings = Settings(key_prefix=prefix, queue=prefix, broker_url=redis_url,
                        record_ttl_s=RECORD_TTL_S, api_key="sk-counts")  # fmt: skip
    st = JobStore(redis.Redis.from_url(redis_url), prefix, RECORD_TTL_S)
    yield settings, st
    for key in st.redis.scan_iter(f"{prefix}*"):
        st.redis.delete(key)


def _record_counts(st: JobStore) -> dict[str, int]:
    """Jobs in each status, read off the records that exist."""
    found = Counter(
        JobRecord.model_validate_json(raw).status.value
        for key in st.redis.scan_iter(st.keys.job("*"))
        if not key.decode().endswith((":file", ":event")) and (raw := st.redis.get(key))
    )
    return {s.value: found.get(s.value, 0) for s in JobStatus}


def _job(settings: Settings, st: JobStore) -> str:
    record = new_record(parse_request({"prompt": "x"}), settings)
    st.create(record, None)
    return record.id


def _end(st: JobStore, job_id: str, status: JobStatus) -> None:
    def change(r: JobRecord) -> None:
        r.status, r.finished_at = status, utcnow_iso()

    st.update(job_id, change)


def _staged(settings: Settings, st: JobStore, batch_id: str, n: int) -> list[str]:
    jobs = []
    for _ in range(n):
        record = new_record(parse_request({"prompt": "x"}), settings, batch_id=batch_id)
        jobs.append(NewJob(record.id, record.model_dump_json(), None))
    st.stage_batch_chunk(batch_id, jobs, first_index=0)
    return [j.id for j in jobs]


def test_finished_jobs_leave_the_counts_when_their_records_expire(deployment) -> None:
    settings, st = deployment
    done, failed, running = (_job(settings, st) for _ in range(3))
    _end(st, done, JobStatus.COMPLETED)
    _end(st, failed, JobStatus.FAILED)
    st.update(running, lambda r: setattr(r, "status", JobStatus.PROCESSING))
    counts = read_stats(st, settings).jobs
    assert counts == _record_counts(st)
    assert (counts["completed"], counts["failed"], counts["processing"]) == (1, 1, 1)

    eventually(lambda: not st.redis.exists(st.keys.job(done), st.keys.job(failed)), timeout_s=5)
    counts = read_stats(st, settings).jobs
    assert counts == _record_counts(st)
    assert (counts["completed"], counts["failed"], counts["processing"]) == (0, 0, 1)


def test_a_staged_batch_never_released_leaves_the_counts_with_its_records(deployment) -> None:
    settings, st = deployment
    staged = _staged(settings, st, "b-never", 3)
    assert read_stats(st, settings).jobs["queued"] == 3 == _record_counts(st)["queued"]

    eventually(lambda: not st.redis.exists(*(st.keys.job(j) for j in staged)), timeout_s=5)
    assert read_stats(st, settings).jobs == _record_counts(st)
    assert read_stats(st, settings).jobs["queued"] == 0


def test_a_released_batch_counts_as_long_as_its_jobs_run(deployment) -> None:
    """Released, its records no longer expire: neither do their counts."""
    settings, st = deployment
    _staged(settings, st, "b-released", 2)
    st.release_batch("b-released")
    time.sleep(RECORD_TTL_S + 0.5)
    counts = read_stats(st, settings).jobs
    assert counts == _record_counts(st)
    assert counts["queued"] == 2
    assert st.schedule.total() == 2


def test_a_retried_job_counts_once_in_its_new_status(deployment) -> None:
    """An ended job taken back (an operator's retry) leaves its expiring count."""
    settings, st = deployment
    job_id = _job(settings, st)
    _end(st, job_id, JobStatus.FAILED)

    def reopen(r: JobRecord) -> None:
        r.status, r.finished_at = JobStatus.QUEUED, None

    st.update(job_id, reopen)
    time.sleep(RECORD_TTL_S + 0.5)
    counts = read_stats(st, settings).jobs
    assert counts == _record_counts(st)
    assert (counts["failed"], counts["queued"]) == (0, 1)
