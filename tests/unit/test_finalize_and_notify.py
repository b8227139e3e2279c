"""The finalize and notify steps' retry decisions (worker/tasks.py): copy rounds, an outage of
our own S3, and a webhook's schedule. The copy itself (S3, the provider's CDN) is e2e's."""

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from botocore.exceptions import EndpointConnectionError

from producer.core.errors import FileRefused, FileUnreachable
from producer.core.names import Lane
from producer.core.records import JobStatus, WebhookDelivery, WebhookState
from tests.unit.fake_runtime import Provider, add_job, fake_runtime
from worker import tasks
from worker.storage import refusal, url_expires_at


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


# --- a file host that does not answer, or refuses the URL ---

CDN = "https://cdn.test/v.mp4"
FRESH = "https://cdn.test/fresh.mp4"


def _host(*answers, fresh=None) -> tuple[Provider, object]:
    """A runtime whose file host (cdn.test) answers `answers` in turn (a fresh URL: `fresh`,
    else the same), and whose provider answers a status query of task t1 with a fresh URL."""
    host = Provider()
    host.on("GET", "/v.mp4", *answers)
    host.on("GET", "/fresh.mp4", *(fresh or answers))
    done = {"id": "t1", "status": "completed", "video_url": FRESH}
    host.on("GET", "/v1/videos/t1", httpx.Response(200, json=done))
    rt = fake_runtime(host, download_max_attempts=3, deadline_s=600, retry_base_s=2,
                      retry_cap_s=60)  # fmt: skip
    rt.sweep_uploads = lambda: None
    return host, rt


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(503), httpx.Response(502), httpx.Response(429), httpx.Response(408),
     httpx.ConnectError("refused"), httpx.ReadTimeout("no head"),
     httpx.RemoteProtocolError("reset before the head")],
    ids=["503", "502", "429", "408", "connect", "timeout", "reset"],
)  # fmt: skip
def test_a_file_host_that_does_not_answer_is_tried_later_without_spending_a_round(answer):
    _, rt = _host(answer)
    rt.store.file_urls["job1"] = CDN
    job = _finalizing(rt, copy_attempts=2)  # the last round, were it spent
    tasks.finalize.run(job)
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FINALIZING
    assert (stored.copy_attempts, stored.fetch_failures) == (2, 1)
    assert rt.store.file_urls["job1"] == CDN  # the same URL next time
    placed = rt.store.schedule.last("job1")
    assert placed.lane is Lane.FINALIZE and 0 < placed.delay_s <= 2


def test_every_third_failure_of_the_file_host_asks_the_provider_for_a_fresh_url_next(rt):
    host, rt = _host(httpx.Response(503))
    rt.store.file_urls["job1"] = CDN
    tasks.finalize.run(_finalizing(rt, fetch_failures=2))
    assert "job1" not in rt.store.file_urls
    tasks.finalize.run(_finalizing(rt, fetch_failures=3))
    assert len(host.sent("GET", "/v1/videos/t1")) == 1
    assert rt.store.file_urls["job1"] == FRESH  # stashed for the tries after
    assert rt.store.get("job1").fetch_failures == 4


def test_a_file_host_down_until_the_deadline_fails_the_job_output_unreachable():
    _, rt = _host(httpx.Response(503))
    rt.store.file_urls["job1"] = CDN
    tasks.finalize.run(_finalizing(rt, submitted_ago_s=601, fetch_failures=2))
    error = rt.store.get("job1").error
    assert error.code == "output_unreachable"
    assert "generated but could not be fetched" in error.message and "503" in error.message


def test_a_video_seen_done_past_the_deadline_still_gets_its_tries():
    _, rt = _host(httpx.Response(503))
    rt.store.file_urls["job1"] = CDN
    tasks.finalize.run(_finalizing(rt, submitted_ago_s=601))
    assert rt.store.get("job1").status is JobStatus.FINALIZING


def test_the_last_try_before_the_deadline_lands_on_it():
    _, rt = _host(httpx.Response(503))
    rt.store.file_urls["job1"] = CDN
    tasks.finalize.run(_finalizing(rt, submitted_ago_s=599.5, fetch_failures=9))
    assert 0 < rt.store.schedule.last("job1").delay_s <= 0.6


def test_a_refused_stashed_url_is_swapped_for_a_fresh_one_at_once():
    host, rt = _host(httpx.Response(403), fresh=[httpx.Response(503)])
    rt.store.file_urls["job1"] = CDN
    tasks.finalize.run(_finalizing(rt))
    assert [c.url.path for c in host.calls] == ["/v.mp4", "/v1/videos/t1", "/fresh.mp4"]
    stored = rt.store.get("job1")
    assert (stored.url_refusals, stored.fetch_failures, stored.copy_attempts) == (0, 1, 0)


def test_a_stashed_url_whose_signature_has_expired_is_not_tried():
    host, rt = _host(httpx.Response(503))
    rt.store.file_urls["job1"] = f"{CDN}?exp={int(time.time()) - 5}&sig=abc"
    tasks.finalize.run(_finalizing(rt))
    assert [c.url.path for c in host.calls] == ["/v1/videos/t1", "/fresh.mp4"]


@pytest.mark.parametrize("status", [404, 410, 403, 401, 400])
def test_a_refused_fresh_url_is_asked_for_again_twice_seconds_apart_then_fails(status):
    _, rt = _host(httpx.Response(status))
    delays = []
    for refusals in range(3):
        tasks.finalize.run(_finalizing(rt, url_refusals=refusals))
        if rt.store.get("job1").terminal:
            break
        delays.append(rt.store.schedule.last("job1").delay_s)
        assert "job1" not in rt.store.file_urls
    assert delays == [2, 4]
    error = rt.store.get("job1").error
    assert error.code == "output_unreachable" and f"HTTP {status}" in error.message
    assert rt.store.get("job1").copy_attempts == 0  # no round of bad bytes was spent


def test_a_provider_that_cannot_give_a_fresh_url_is_waited_out_like_the_file_host():
    host = Provider()
    host.on("GET", "/v1/videos/t1", httpx.Response(503))
    rt = fake_runtime(host, download_max_attempts=3, deadline_s=600)
    rt.sweep_uploads = lambda: None
    tasks.finalize.run(_finalizing(rt))
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FINALIZING and stored.fetch_failures == 1


def test_a_provider_that_has_lost_the_task_counts_as_a_refused_url():
    host = Provider()
    gone = {"error": {"code": "task_not_exist", "message": "gone"}}
    host.on("GET", "/v1/videos/t1", httpx.Response(404, json=gone))
    rt = fake_runtime(host, download_max_attempts=3, deadline_s=600)
    rt.sweep_uploads = lambda: None
    tasks.finalize.run(_finalizing(rt, url_refusals=2))
    assert rt.store.get("job1").error.code == "output_unreachable"


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


@pytest.mark.parametrize(
    ("query", "expires_at"),
    [("exp=1796464800&sig=ab", 1796464800),
     ("Expires=1796464800&Signature=x&Key-Pair-Id=K", 1796464800),
     ("X-Amz-Date=20261206T010000Z&X-Amz-Expires=3600&X-Amz-Signature=s",
      datetime(2026, 12, 6, 2, tzinfo=UTC).timestamp()),
     ("X-Goog-Date=20261206T010000Z&X-Goog-Expires=900&X-Goog-Signature=s",
      datetime(2026, 12, 6, 1, 15, tzinfo=UTC).timestamp()),
     ("sv=2022-11-02&se=2026-12-06T01:00:00Z&sig=s",
      datetime(2026, 12, 6, 1, tzinfo=UTC).timestamp()),
     ("", None), ("token=opaque", None), ("exp=soon", None), ("exp=12", None),
     ("X-Amz-Date=garbage&X-Amz-Expires=60", None), ("se=2026-12-06", None)],
)  # fmt: skip
def test_a_signed_urls_expiry_is_read_from_its_query(query, expires_at):
    assert url_expires_at(f"https://cdn.test/v.mp4?{query}") == expires_at


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, FileUnreachable), (503, FileUnreachable), (408, FileUnreachable),
     (425, FileUnreachable), (429, FileUnreachable), (400, FileRefused), (401, FileRefused),
     (403, FileRefused), (404, FileRefused), (410, FileRefused), (416, FileRefused)],
)  # fmt: skip
def test_a_file_hosts_status_says_not_now_or_not_this_url(status, kind):
    assert type(refusal(status)) is kind
