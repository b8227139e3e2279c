"""`videoqueue_jobs{status}` (read_stats().jobs) counts what the records say, after a finished
record expires and for a staged batch never released, through a real Redis without workers."""

from __future__ import annotations

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
# The expiry of the records that must still be there when the test reads the counts: longer
# than any stall of a loaded host between writing them and reading (a 1 s one is not).
LASTING_TTL_S = 300.0


@pytest.fixture
def deployment(redis_url: str) -> Iterator[tuple[Settings, JobStore]]:
    prefix = fresh_prefix()
    settings = Settings(key_prefix=prefix, queue=prefix, broker_url=redis_url,
                        record_ttl_s=RECORD_TTL_S, api_key="sk-counts")  # fmt: skip
    st = JobStore(redis.Redis.from_url(redis_url), prefix, RECORD_TTL_S)
    yield settings, st
    for key in st.redis.scan_iter(f"{prefix}*"):
        st.redis.delete(key)


def _lasting(st: JobStore) -> JobStore:
    """The same deployment's store, keeping a finished job's records LASTING_TTL_S."""
    return JobStore(st.redis, st.keys.prefix, LASTING_TTL_S)


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
    """Ended jobs count while their records exist (these last: no stall of the host outlasts
    them before the read) and leave the counts with their records (these expire in 1 s)."""
    settings, st = deployment
    done, failed, running = (_job(settings, st) for _ in range(3))
    _end(_lasting(st), done, JobStatus.COMPLETED)
    _end(_lasting(st), failed, JobStatus.FAILED)
    st.update(running, lambda r: setattr(r, "status", JobStatus.PROCESSING))
    gone = [_job(settings, st) for _ in range(2)]
    _end(st, gone[0], JobStatus.COMPLETED)
    _end(st, gone[1], JobStatus.FAILED)

    eventually(lambda: not st.redis.exists(*(st.keys.job(j) for j in gone)), timeout_s=5)
    counts = read_stats(st, settings).jobs
    assert counts == _record_counts(st)
    assert (counts["completed"], counts["failed"], counts["processing"]) == (1, 1, 1)


def test_a_staged_batch_never_released_leaves_the_counts_with_its_records(deployment) -> None:
    """Staged jobs count while their records exist (a batch staged with lasting records) and
    leave the counts with them (one whose records expire in 1 s)."""
    settings, st = deployment
    _staged(settings, _lasting(st), "b-kept", 3)
    staged = _staged(settings, st, "b-never", 2)

    eventually(lambda: not st.redis.exists(*(st.keys.job(j) for j in staged)), timeout_s=5)
    assert read_stats(st, settings).jobs == _record_counts(st)
    assert read_stats(st, settings).jobs["queued"] == 3


def _expiring(st: JobStore, job_ids: list[str]) -> list[int]:
    """The record keys' remaining lives in ms (-1: they do not expire)."""
    return [st.redis.pttl(st.keys.job(j)) for j in job_ids]


def test_a_released_batch_counts_as_long_as_its_jobs_run(deployment) -> None:
    """Released, its records no longer expire: neither do their counts. (Staged with lasting
    records: a 1 s expiry could pass before the release on a loaded host; the counts are read
    while the staged expiry would still count them, so a count left to it shows.)"""
    settings, st = deployment
    staged = _staged(settings, _lasting(st), "b-released", 2)
    st.release_batch("b-released")
    assert _expiring(st, staged) == [-1, -1]
    counts = read_stats(st, settings).jobs
    assert counts == _record_counts(st)
    assert counts["queued"] == 2
    assert st.schedule.total() == 2
    assert not st.redis.zcard(st.keys.expiring_status(JobStatus.QUEUED.value))


def test_a_retried_job_counts_once_in_its_new_status(deployment) -> None:
    """An ended job taken back (an operator's retry) leaves its expiring count. (Ended with a
    lasting record: a 1 s one could expire before the retry on a loaded host; its expiring
    count, left behind, would still count now.)"""
    settings, st = deployment
    job_id = _job(settings, st)
    _end(_lasting(st), job_id, JobStatus.FAILED)

    def reopen(r: JobRecord) -> None:
        r.status, r.finished_at = JobStatus.QUEUED, None

    st.update(job_id, reopen)
    assert _expiring(st, [job_id]) == [-1]
    counts = read_stats(st, settings).jobs
    assert counts == _record_counts(st)
    assert (counts["failed"], counts["queued"]) == (0, 1)
