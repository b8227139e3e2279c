"""The console's filtered listing (producer/core/scan.py, lua/scan_jobs.lua) on a real Redis:
every filter, paging without repeats or gaps, and a scan that never reads past its window."""

from __future__ import annotations

import time

from producer import enqueue, enqueue_batch
from producer.core.records import ErrorInfo, JobRecord, JobStatus
from producer.core.scan import JobFilter, JobScan
from producer.core.store import store


def _fail(code: str):
    def change(r: JobRecord) -> bool:
        r.status, r.error = JobStatus.FAILED, ErrorInfo(code=code, message="it broke")
        r.provider = "backup"
        return True

    return change


def _jobs(settings, n: int = 30) -> list[str]:
    ids = []
    for i in range(n):
        req = {"model": "sora-2" if i % 3 == 0 else "sora", "prompt": f"clip {i}",
               "metadata": {"order": str(i)}}  # fmt: skip
        ids.append(enqueue(req, tenant="acme" if i % 2 else "globex", settings=settings))
    return ids


def test_scan_filters_by_status_error_tenant_model_provider_metadata_and_time(bare_settings):
    s = bare_settings
    ids = _jobs(s)
    st = store(s)
    st.update(ids[1], _fail("download_failed"))
    st.update(ids[3], _fail("timeout"))
    scan = JobScan(st)

    def found(**f) -> set[str]:
        return {r.id for r in scan.page(JobFilter(**f), limit=100).jobs}

    assert found() == set(ids)
    assert found(statuses=(JobStatus.FAILED,)) == {ids[1], ids[3]}
    assert found(statuses=(JobStatus.FAILED,), error_code="download_failed") == {ids[1]}
    assert found(tenant="acme") == set(ids[1::2])
    assert found(model="sora-2") == set(ids[0::3])
    assert found(provider="backup") == {ids[1], ids[3]}
    assert found(meta_key="order", meta_value="7") == {ids[7]}
    assert found(meta_key="order") == set(ids)
    assert found(meta_key="nope") == set()
    now = time.time()
    assert found(since_s=now - 60) == set(ids)
    assert found(until_s=now - 3600) == set()
    assert found(tenant="acme", since_s=now - 60, statuses=(JobStatus.QUEUED,)) == set(ids[5::2])


def test_scan_pages_newest_first_without_repeats_or_gaps(bare_settings):
    ids = _jobs(bare_settings, 23)
    scan = JobScan(store(bare_settings))
    seen: list[str] = []
    cursor = None
    while True:
        page = scan.page(JobFilter(), cursor=cursor, limit=5)
        seen += [r.id for r in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_scan_reads_at_most_its_window_and_says_where_it_stopped(bare_settings):
    ids = _jobs(bare_settings, 25)
    scan = JobScan(store(bare_settings))
    rare = JobFilter(meta_key="order", meta_value="0")  # the oldest job only
    page = scan.page(rare, limit=10, window=10)
    assert (page.jobs, page.scanned) == ([], 10)
    assert page.next_cursor == ids[-10]
    page = scan.page(rare, cursor=page.next_cursor, limit=10, window=10)
    assert (page.jobs, page.scanned, page.next_cursor) == ([], 10, ids[-20])
    page = scan.page(rare, cursor=page.next_cursor, limit=10, window=10)
    assert [r.id for r in page.jobs] == [ids[0]] and page.scanned == 5
    assert page.next_cursor is None


def test_scan_of_a_batch_reads_its_job_list_in_request_order(bare_settings):
    s = bare_settings
    _jobs(s, 5)
    batch_id = enqueue_batch([{"model": "sora", "prompt": f"b{i}"} for i in range(7)], settings=s)
    scan = JobScan(store(s))
    first = scan.page(JobFilter(batch_id=batch_id), limit=4)
    rest = scan.page(JobFilter(batch_id=batch_id), cursor=first.next_cursor, limit=4)
    listed = [r.id for r in first.jobs + rest.jobs]
    assert listed == store(s).batch_job_ids(batch_id) and rest.next_cursor is None
    assert scan.page(JobFilter(batch_id=batch_id, since_s=time.time() + 60)).jobs == []


def test_a_page_read_in_small_script_steps_finds_the_same_jobs(bare_settings, monkeypatch):
    """Each script call reads a few entries (Redis runs one script at a time): a page made of
    many calls holds what one call would, and stops at its window or its limit."""
    ids = _jobs(bare_settings, 20)
    monkeypatch.setattr("producer.core.scan.SCRIPT_STEP", 3)
    scan = JobScan(store(bare_settings))
    page = scan.page(JobFilter(), limit=7)
    assert [r.id for r in page.jobs] == ids[::-1][:7] and page.next_cursor == ids[-7]
    sora2 = scan.page(JobFilter(model="sora-2"), limit=100, window=10)
    assert [r.id for r in sora2.jobs] == [j for j in ids[::-1][:10] if ids.index(j) % 3 == 0]
    assert sora2.scanned == 10 and sora2.next_cursor == ids[-10]
