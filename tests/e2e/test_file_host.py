"""A video the provider has made (and billed) is not lost to its file host: through real
workers, Redis, SeaweedFS and the sandbox, a file host that refuses downloads for longer than
the old retry budget, URLs that expire meanwhile, a CDN that answers 404 for a while, and one
that never comes back."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime

import pytest

from ops.admin import retry_job
from producer import JobStatus, enqueue, get, wait
from producer.core.records import JobRecord
from tests.e2e.conftest import BUCKET, Pipeline, eventually

pytestmark = pytest.mark.e2e

# A budget the old download loop spent in a second or two of refusals (2 rounds of 2 tries,
# backoff under a second; a try that times out takes 1 s): every outage below outlasts it.
BUDGET = {"VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "2", "VIDEOQUEUE_DOWNLOAD_TIMEOUT_S": "1"}
OUTAGE_S = 8.0


def _provider_bytes(p: Pipeline, s3_client, record: JobRecord) -> None:
    """The job completed, and S3 holds exactly the bytes the sandbox serves for its task."""
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.output is not None
    stored = s3_client.get_object(Bucket=BUCKET, Key=record.output.key)["Body"].read()
    served = p.served_bytes(record.provider_task_id or "")
    assert hashlib.sha256(stored).hexdigest() == record.output.sha256
    assert hashlib.sha256(served).hexdigest() == record.output.sha256


def _one_create_each(p: Pipeline, jobs: int) -> None:
    tasks = p.sandbox.stats()["tasks"]
    assert len(tasks) == jobs and all(t["creates"] == 1 for t in tasks.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["503", "reset", "timeout"])
def test_a_file_host_down_longer_than_the_retry_budget_then_back_loses_no_video(
    make_pipeline, s3_client, how
):
    """Every job completes with the provider's bytes once the host is back, one create each,
    and its webhook says completed; the outage reached every job's download."""
    p = make_pipeline(env=BUDGET)
    p.sandbox.configure(file_outage_s=OUTAGE_S, file_outage=how)
    started = time.monotonic()
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(4)]
    for job_id in ids:
        record = wait(job_id, 90, settings=p.settings)
        _provider_bytes(p, s3_client, record)
        assert record.fetch_failures >= 1  # it met the outage
    assert time.monotonic() - started >= OUTAGE_S  # none came through before the host was back
    assert p.sandbox.stats()["totals"]["faults"][f"file_outage_{how}"] >= len(ids)
    _one_create_each(p, len(ids))
    events = [p.receiver.wait_for(lambda d, i=i: d.json["data"]["id"] == i) for i in ids]
    assert all(e.verified and e.json["type"] == "video.completed" for e in events)


@pytest.mark.timeout(120)
def test_a_file_url_that_expired_during_the_outage_is_fetched_afresh(make_pipeline, s3_client):
    """Every URL handed out during the outage has expired by its end, and hides its expiry
    (an opaque token): the job completes only with a URL asked of the provider after it."""
    p = make_pipeline(sandbox={"url_ttl_s": 0, "opaque_urls": True}, env=BUDGET)
    p.sandbox.configure(file_outage_s=3600)
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(job_id, settings=p.settings).fetch_failures >= 3, 60)
    before = p.sandbox.stats()["tasks"]
    (task_id,) = before
    p.sandbox.configure(file_outage_s=0, url_ttl_s=60)  # back, and links last a minute again
    record = wait(job_id, 60, settings=p.settings)
    _provider_bytes(p, s3_client, record)
    after = p.sandbox.stats()["tasks"][task_id]
    assert after["file_urls"] > before[task_id]["file_urls"]  # a fresh URL, after the outage
    assert after["status_queries"] > before[task_id]["status_queries"]
    _one_create_each(p, 1)


@pytest.mark.timeout(90)
def test_a_cdn_that_answers_404_for_a_while_is_asked_again_with_fresh_urls(
    make_pipeline, s3_client
):
    """A 404 right after the provider said done (a CDN that has not got the file yet), and
    again for the next fresh URL: the job asks for another and completes."""
    p = make_pipeline(sandbox={"fault_sequence": {"file": ["404", "404", "404"]}}, env=BUDGET)
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    task = p.sandbox.stats()["tasks"][record.provider_task_id]
    _provider_bytes(p, s3_client, record)
    assert record.url_refusals == 2 and record.copy_attempts == 1
    assert task["file_urls"] >= 3 and task["downloads"] == 1
    assert p.sandbox.stats()["totals"]["faults"]["sequence_404"] == 3


@pytest.mark.timeout(90)
def test_a_file_host_that_never_comes_back_ends_the_job_at_its_deadline_output_unreachable(
    make_pipeline, s3_client
):
    """Tried until the job's deadline (VIDEOQUEUE_DEADLINE_S after submission), never past
    it by much, then failed with a code that says the video was made, and its webhook says
    so; once the host is back, `videoqueue retry` collects the video without a new task."""
    deadline_s = 8.0
    p = make_pipeline(env={**BUDGET, "VIDEOQUEUE_DEADLINE_S": str(deadline_s)})
    p.sandbox.configure(file_outage_s=3600)
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.FAILED and record.error is not None
    assert record.error.code == "output_unreachable"
    assert "generated but could not be fetched" in record.error.message
    took_s = _seconds(record.finished_at) - _seconds(record.submitted_at)
    assert deadline_s - 0.5 <= took_s <= deadline_s + 5, took_s
    assert record.fetch_failures >= 2
    event = p.receiver.wait_for(lambda d: d.json["data"]["id"] == job_id)
    assert event.verified and event.json["type"] == "video.failed"
    assert event.json["data"]["error"]["code"] == "output_unreachable"
    # The host back, an operator's retry copies the video it made: no second task.
    p.sandbox.configure(file_outage_s=0)
    retried = retry_job(p.settings, job_id)
    assert retried.status is JobStatus.FINALIZING and retried.fetch_failures == 0
    _provider_bytes(p, s3_client, wait(job_id, 30, settings=p.settings))
    _one_create_each(p, 1)


def _seconds(iso: str | None) -> float:
    assert iso is not None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.timeout(120)
def test_a_jobs_own_deadline_bounds_its_wait_for_the_file_host(make_pipeline):
    """A request's deadline_s, shorter than VIDEOQUEUE_DEADLINE_S (an hour here), ends the wait
    for a file host that is down at that deadline, not an hour later."""
    deadline_s = 8.0
    p = make_pipeline(env={**BUDGET, "VIDEOQUEUE_DEADLINE_S": "3600"})
    p.sandbox.configure(file_outage_s=3600)
    job_id = enqueue(p.request(deadline_s=deadline_s), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.FAILED and record.error is not None
    assert record.error.code == "output_unreachable"
    took_s = _seconds(record.finished_at) - _seconds(record.created_at)
    assert deadline_s - 0.5 <= took_s <= deadline_s + 5, took_s
    _one_create_each(p, 1)
