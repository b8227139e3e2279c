"""The finalize and notify steps' retry decisions (worker/tasks.py): copy rounds, an outage of
our own S3, and a webhook's schedule. The copy itself (S3, the provider's CDN) is e2e's."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from botocore.exceptions import EndpointConnectionError

from producer.core.names import Lane
from producer.core.records import JobStatus, WebhookDelivery, WebhookState
from tests.unit.fake_runtime import Provider, add_job, fake_runtime
from worker import tasks


def _finalizing(rt, submitted_ago_s: float = 60.0, **fields):
    at = datetime.now(UTC) - timedelta(seconds=submitted_ago_s)
    return add_job(rt, lane=Lane.FINALIZE, status=JobStatus.FINALIZING, provider_task_id="t1",
                   submitted_at=at.isoformat().replace("+00:00", "Z"), **fields)  # fmt: skip


def _s3_down() -> None:
    raise EndpointConnectionError(endpoint_url="http://s3.test")


def _copy_fails(*args, **kwargs):
    raise httpx.ReadError("the CDN dropped the connection")


@pytest.fixture
def rt():
    return fake_runtime(Provider(), download_max_attempts=3, deadline_s=600)


def test_an_outage_of_our_s3_postpones_the_copy_without_spending_a_round(rt):
    job = _finalizing(rt, copy_attempts=1)
    rt.sweep_uploads = _s3_down
    tasks.finalize.run(job)
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FINALIZING and stored.copy_attempts == 1
    assert rt.store.schedule.last("job1").lane is Lane.FINALIZE


def test_an_outage_of_our_s3_past_the_deadline_fails_the_job(rt):
    job = _finalizing(rt, submitted_ago_s=700)
    rt.sweep_uploads = _s3_down
    tasks.finalize.run(job)
    assert rt.store.get("job1").error.code == "storage_unavailable"


def test_a_failed_round_of_copies_is_tried_again_later_from_a_fresh_url(rt, monkeypatch):
    monkeypatch.setattr(tasks, "copy_url_to_s3", _copy_fails)
    rt.sweep_uploads = lambda: None
    rt.store.file_urls["job1"] = "https://cdn.test/v.mp4"
    job = _finalizing(rt)
    tasks.finalize.run(job)
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FINALIZING and stored.copy_attempts == 1
    assert "job1" not in rt.store.file_urls  # the next round asks the provider again
    assert rt.store.schedule.last("job1").delay_s > 0


def test_the_last_round_of_copies_fails_the_job_download_failed(rt, monkeypatch):
    monkeypatch.setattr(tasks, "copy_url_to_s3", _copy_fails)
    rt.sweep_uploads = lambda: None
    rt.store.file_urls["job1"] = "https://cdn.test/v.mp4"
    job = _finalizing(rt, copy_attempts=2)
    tasks.finalize.run(job)
    error = rt.store.get("job1").error
    assert error.code == "download_failed" and "ReadError" in error.message


def _notified(rt, answer: httpx.Response, attempts: int = 0):
    hook = WebhookDelivery(url="http://hook.test/in", event_type="video.completed",
                           attempts=attempts)  # fmt: skip
    job = add_job(rt, lane=Lane.NOTIFY, status=JobStatus.COMPLETED, webhook=hook)
    rt.provider_answers.on("POST", "/in", answer)
    tasks.notify.run(job)
    return rt.store.get("job1").webhook


@pytest.fixture
def hook_rt():
    receiver = Provider()
    rt = fake_runtime(receiver, webhook_schedule_s=[0, 5, 300])
    rt.provider_answers = receiver
    return rt


def test_a_failed_delivery_is_retried_on_the_schedule(hook_rt):
    hook = _notified(hook_rt, httpx.Response(500))
    assert hook.state is WebhookState.PENDING and hook.attempts == 1
    placed = hook_rt.store.schedule.last("job1")
    assert placed.lane is Lane.NOTIFY and 5 <= placed.delay_s <= 5.5


def test_the_last_failed_delivery_is_dead_lettered(hook_rt):
    hook = _notified(hook_rt, httpx.Response(500), attempts=2)
    assert hook.state is WebhookState.DEAD
    assert list(hook_rt.store.dead_letters.values()) == ["job1"]
    assert hook_rt.store.schedule.last("job1").lane is None


def test_a_receiver_that_answers_gone_is_not_asked_again(hook_rt):
    hook = _notified(hook_rt, httpx.Response(410))
    assert hook.state is WebhookState.GONE and hook_rt.store.dead_letters == {}
    assert hook_rt.store.schedule.last("job1").lane is None
