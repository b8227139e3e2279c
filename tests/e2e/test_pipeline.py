"""The whole pipeline through real workers, Redis, SeaweedFS, the sandbox and a receiver."""

from __future__ import annotations

import hashlib
import io
import json
import time

import av
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from producer import JobStatus, cancel, enqueue, get, wait
from producer.core import names
from producer.core.names import Lane
from producer.core.records import WebhookState
from producer.core.store import store
from tests.e2e.conftest import API_KEY, BUCKET, WEBHOOK_SECRET, eventually
from worker.messages import task_message
from worker.webhooks import message_id


def _check_object(s3_client, record, width, height, duration_s):
    """The MP4 in S3 is the one the record describes, and has the requested shape."""
    out = record.output
    assert out is not None and out.bucket == BUCKET
    assert out.key == f"videos/{record.id}.mp4"
    obj = s3_client.get_object(Bucket=out.bucket, Key=out.key)
    data = obj["Body"].read()
    assert obj["ContentType"] == "video/mp4"
    assert obj["Metadata"]["job-id"] == record.id
    assert len(data) == out.size_bytes
    assert hashlib.sha256(data).hexdigest() == out.sha256
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (width, height)
        assert container.duration / av.time_base == pytest.approx(duration_s, abs=0.6)
    assert (out.width, out.height) == (width, height)
    assert out.duration_s == pytest.approx(duration_s, abs=0.6)
    return data


@pytest.mark.parametrize("api_format", ["openai", "unified"])
def test_a_job_lands_in_s3_and_the_signed_webhook_follows(make_pipeline, s3_client, api_format):
    p = make_pipeline(env={"VIDEOQUEUE_API_FORMAT": api_format})
    job_id = enqueue(p.request(metadata={"user": "u1"}), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.provider_task_id and record.attempts == 1
    assert record.api_format == api_format
    _check_object(s3_client, record, 64, 48, 2)

    delivery = p.receiver.wait_for(lambda d: d.verified, timeout_s=20)
    Webhook(WEBHOOK_SECRET).verify(delivery.body.decode(), dict(delivery.headers))
    event = json.loads(delivery.body)
    assert event["type"] == "video.completed"
    assert event["data"]["id"] == job_id
    assert event["data"]["metadata"] == {"user": "u1"}
    assert event["data"]["output"]["sha256"] == record.output.sha256
    assert API_KEY not in delivery.body.decode()
    final = eventually(lambda: (r := get(job_id, settings=p.settings)).webhook.state
                       is WebhookState.DELIVERED and r)  # fmt: skip
    assert final.webhook.attempts == 1 and final.webhook.last_status_code == 200
    stats = p.sandbox.stats()
    assert stats["tasks"][record.provider_task_id]["creates"] == 1
    secrets = [API_KEY, WEBHOOK_SECRET, p.env["AWS_SECRET_ACCESS_KEY"]]
    log = p.workers[0].log_text()
    assert "succeeded" in log
    for secret in secrets:
        assert secret not in log
        assert secret not in final.model_dump_json()
        assert secret not in delivery.body.decode()


FEATURES = {
    "text_to_video": ({"aspect_ratio": "16:9", "size": None, "duration": 2}, (1280, 720, 2)),
    "image_to_video": ({"image_url": "https://example.com/portrait.jpg"}, (64, 48, 2)),
    "pro_mode": ({"model": "sora-pro", "size": "96x64", "duration": 3}, (96, 64, 3)),
    "storyboard": (
        {"prompt": None, "duration": None, "storyboard": [
            {"prompt": "A sunrise over the mountains", "duration": 1},
            {"prompt": "Camera pans down to a village", "duration": 2}]},
        (64, 48, 3),
    ),
}  # fmt: skip


@pytest.mark.parametrize("api_format", ["openai", "unified"])
def test_every_feature_runs_through_the_same_pipeline(make_pipeline, s3_client, api_format):
    p = make_pipeline(env={"VIDEOQUEUE_API_FORMAT": api_format}, concurrency=4)
    character = httpx.post(
        f"{p.settings.api_base_url}/sora/v1/characters",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"name": "Luna", "description": "silver hair",
              "reference_images": ["https://example.com/luna.jpg"]},
    ).json()  # fmt: skip
    jobs = {}
    for name, (fields, shape) in {**FEATURES, "characters": ({"characters": [character["id"]]},
                                                             (64, 48, 2))}.items():  # fmt: skip
        request = {k: v for k, v in p.request(**fields).items() if v is not None}
        jobs[name] = (enqueue(request, settings=p.settings), shape)
    for name, (job_id, (w, h, d)) in jobs.items():
        record = wait(job_id, 90, settings=p.settings)
        assert record.status is JobStatus.COMPLETED, (name, record.error)
        _check_object(s3_client, record, w, h, d)
    tasks = p.sandbox.stats()["tasks"]
    assert len(tasks) == len(jobs)
    assert all(t["creates"] == 1 for t in tasks.values())


def test_every_task_file_is_distinct(make_pipeline, s3_client):
    p = make_pipeline()
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(3)]
    digests = {wait(i, 60, settings=p.settings).output.sha256 for i in ids}
    assert len(digests) == 3


def test_a_provider_side_failure_fails_the_job_with_its_message(make_pipeline):
    p = make_pipeline(sandbox={"fail_rate": 1.0})
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error and record.error.message
    assert record.output is None
    event = json.loads(p.receiver.wait_for(lambda d: d.verified, timeout_s=20).body)
    assert event["type"] == "video.failed"
    assert event["data"]["error"]["message"] == record.error.message


def test_a_4xx_from_the_provider_fails_at_once_with_the_providers_message(make_pipeline):
    p = make_pipeline()
    job_id = enqueue(p.request(model="no-such-model"), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert "HTTP 400" in record.error.message and "model" in record.error.message
    assert record.attempts == 1
    assert API_KEY not in record.model_dump_json()


def test_a_job_unfinished_at_the_deadline_fails_with_timeout_and_is_cancelled_upstream(
    make_pipeline,
):
    p = make_pipeline(sandbox={"stuck_rate": 1.0}, env={"VIDEOQUEUE_DEADLINE_S": "2"})
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error.code == "timeout"
    assert record.polls >= 2
    # The provider's task would hold its slot (and, at some providers, be billed) forever.
    eventually(lambda: p.sandbox.stats(include_tasks=False)["totals"]["deleted"] == 1, 10)


def test_5xx_and_429_on_submit_are_retried_with_backoff(make_pipeline):
    p = make_pipeline(sandbox={"error_rate": 0.5, "seed": 4})
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(4)]
    records = [wait(i, 90, settings=p.settings) for i in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    stats = p.sandbox.stats()
    assert sum(v for k, v in stats["totals"]["responses_by_code"].items() if k.startswith("5")) > 0
    assert all(t["creates"] >= 1 for t in stats["tasks"].values())
    assert len(stats["tasks"]) == 4


def test_a_truncated_download_starts_again(make_pipeline, s3_client):
    p = make_pipeline(sandbox={"truncate_rate": 1.0})
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["downloads"] >= 1, 30)
    p.sandbox.configure(truncate_rate=0.0)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    _check_object(s3_client, record, 64, 48, 2)
    assert p.sandbox.stats()["tasks"][record.provider_task_id]["downloads"] >= 2


def test_an_expired_url_is_refreshed_by_querying_the_task_again(make_pipeline, s3_client):
    p = make_pipeline(sandbox={"url_ttl_s": 0})
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["responses_by_code"].get("403", 0) >= 1, 30)
    p.sandbox.configure(url_ttl_s=60)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    _check_object(s3_client, record, 64, 48, 2)


def test_the_api_key_never_reaches_a_file_host_on_another_origin(make_pipeline, s3_client):
    p = make_pipeline()
    cdn = p.settings.api_base_url.replace("127.0.0.1", "localhost")
    p.sandbox.configure(cdn_base_url=cdn)
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    totals = p.sandbox.stats()["totals"]
    assert totals["responses_by_code"].get("302", 0) >= 1
    assert totals["file_downloads_with_auth"] == 0


def test_other_routers_status_words_are_understood(make_pipeline):
    p = make_pipeline(sandbox={"vocabulary": "alt"})
    record = wait(enqueue(p.request(), settings=p.settings), 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.provider_status.lower() in {"succeeded", "success"}


def test_a_failing_webhook_receiver_is_retried_with_the_same_webhook_id(make_pipeline):
    p = make_pipeline()
    p.receiver.fail_first = 2
    job_id = enqueue(p.request(), settings=p.settings)
    record = eventually(lambda: (r := get(job_id, settings=p.settings)).webhook
                        and r.webhook.state is WebhookState.DELIVERED and r, 40)  # fmt: skip
    assert record.webhook.attempts == 3
    assert record.webhook.last_status_code == 200
    deliveries = p.receiver.deliveries
    assert [d.status for d in deliveries] == [500, 500, 200]
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert len({d.body for d in deliveries}) == 1


def test_a_webhook_that_never_succeeds_is_dead_lettered(make_pipeline):
    p = make_pipeline()
    p.receiver.fail_first = 100
    job_id = enqueue(p.request(), settings=p.settings)
    record = eventually(lambda: (r := get(job_id, settings=p.settings)).webhook
                        and r.webhook.state is WebhookState.DEAD and r, 40)  # fmt: skip
    assert record.status is JobStatus.COMPLETED
    assert record.webhook.attempts == 4 and record.webhook.last_status_code == 500
    st = store(p.settings)
    dead = st.redis.hget(st.keys.dead_letters(), message_id(job_id, "video.completed"))
    assert json.loads(dead)["state"] == "dead" and json.loads(dead)["attempts"] == 4


def test_410_gone_stops_webhook_retries(make_pipeline):
    p = make_pipeline()
    p.receiver.status_sequence = [410]
    job_id = enqueue(p.request(), settings=p.settings)
    record = eventually(lambda: (r := get(job_id, settings=p.settings)).webhook
                        and r.webhook.state is WebhookState.GONE and r, 30)  # fmt: skip
    assert record.webhook.attempts == 1
    assert len(p.receiver.deliveries) == 1


def test_a_submit_run_again_after_the_provider_accepted_the_job_does_not_submit_twice(
    make_pipeline,
):
    """A job put back in the submit lane after it was submitted (as a crash between our
    record and the schedule's move would leave it) is handed on to polling: the record has
    its provider task id, so the provider is not called again."""
    p = make_pipeline(sandbox={"stuck_rate": 1.0}, env={"VIDEOQUEUE_DEADLINE_S": "6"})
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(job_id, settings=p.settings).polls >= 1, 20)
    st = store(p.settings)
    st.schedule.place(job_id, Lane.SUBMIT, 0.0)
    eventually(lambda: p.workers[0].log_text().count(f"{names.SUBMIT}[") >= 4, 20)
    record = wait(job_id, 30, settings=p.settings)
    assert record.error.code == "timeout"  # the job went on, with its one provider task
    assert p.sandbox.stats()["totals"]["creates"] == 1
    assert record.attempts == 1


def test_a_stale_claim_message_does_nothing(make_pipeline):
    """A message whose claim token no longer holds the job's entry (kombu restoring an old
    message, a duplicate) runs no step: the job is submitted once."""
    p = make_pipeline(workers=0)
    job_id = enqueue(p.request(), settings=p.settings)
    st = store(p.settings)
    stale = task_message(names.SUBMIT, [[job_id], "not-the-claim", "submit", []], p.settings.queue)
    for _ in range(3):
        st.redis.lpush(p.settings.queue, stale)
    p.start_worker()
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.attempts == 1 and p.sandbox.stats()["totals"]["creates"] == 1
    eventually(lambda: p.workers[0].log_text().count(f"{names.SUBMIT}[") >= 4, 20)


def test_a_crash_between_the_providers_answer_and_our_record_does_not_submit_twice(
    make_pipeline,
):
    """The worker died after the provider accepted the job but before it was recorded:
    the retry sends the same Idempotency-Key, and the provider hands back the same task."""
    p = make_pipeline(workers=0)
    job_id = enqueue(p.request(), settings=p.settings)
    first = httpx.post(
        f"{p.settings.api_base_url}/v1/videos",
        headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": job_id},
        json={"model": "sora", "prompt": "a cat playing piano", "size": "64x48", "duration": 2},
    ).json()
    p.start_worker()
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.provider_task_id == first["id"]
    assert len(p.sandbox.stats()["tasks"]) == 1


def test_a_killed_worker_loses_no_job_and_submits_nothing_twice(make_pipeline):
    """SIGKILL a worker while the provider is answering its submit; when the claim's lease
    runs out a second worker claims the job again and completes it, with the same task."""
    p = make_pipeline(
        sandbox={"slow_s": 4.0, "slow_rate": 1.0},
        env={"VIDEOQUEUE_VISIBILITY_TIMEOUT_S": "10", "VIDEOQUEUE_API_TIMEOUT_S": "8"},
    )  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["creates"] >= 1, 20)
    p.workers[0].kill()
    assert get(job_id, settings=p.settings).provider_task_id is None
    p.sandbox.configure(slow_rate=0.0)
    p.start_worker()
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert len(p.sandbox.stats()["tasks"]) == 1


def test_a_job_cancelled_before_submission_is_never_submitted(make_pipeline):
    p = make_pipeline(workers=0)
    job_id = enqueue(p.request(), settings=p.settings)
    assert cancel(job_id, settings=p.settings).status is JobStatus.CANCELLED
    p.start_worker()
    eventually(lambda: store(p.settings).schedule.total() == 0, 10)
    assert p.sandbox.stats()["totals"]["creates"] == 0
    assert get(job_id, settings=p.settings).status is JobStatus.CANCELLED


def test_an_idempotency_key_gives_back_the_earlier_job(make_pipeline):
    p = make_pipeline(workers=0)
    a = enqueue(p.request(idempotency_key="order-17"), settings=p.settings)
    b = enqueue(p.request(idempotency_key="order-17", prompt="other"), settings=p.settings)
    assert a == b
    st = store(p.settings)
    assert st.schedule.total() == 1 and st.schedule.entry(a)[0] is Lane.SUBMIT


def test_an_unknown_status_word_is_counted_and_polling_goes_on(make_pipeline):
    p = make_pipeline(sandbox={"vocabulary": "novel", "fast": False, "time_scale": 0.1})
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    st = store(p.settings)
    counted = {k.decode(): int(v) for k, v in st.redis.hgetall(st.keys.unknown_statuses()).items()}
    assert set(counted) <= {"warming_up", "rendering_frames"} and sum(counted.values()) >= 1
    assert "unknown provider status" in p.workers[0].log_text()


def test_an_openai_shaped_provider_serves_the_file_from_its_content_route(make_pipeline, s3_client):
    p = make_pipeline(sandbox={"flavor": "openai"})
    job_id = enqueue(p.request(model="sora-2", size="1280x720", duration=4), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    _check_object(s3_client, record, 1280, 720, 4)
    task = p.sandbox.stats()["tasks"][record.provider_task_id]
    assert task["downloads"] == 1 and task["creates"] == 1


def test_429_from_the_providers_concurrency_cap_is_retried_after_retry_after(make_pipeline):
    one_second = {"sora": {"base_s": 1.0, "per_video_second_s": 0}}
    p = make_pipeline(sandbox={"max_concurrent": 1, "fast": False, "timings": one_second})
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(3)]
    records = [wait(i, 60, settings=p.settings) for i in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    stats = p.sandbox.stats()
    assert stats["totals"]["rate_limited"].get("concurrency", 0) >= 1
    assert max(r.attempts for r in records) >= 2
    assert len(stats["tasks"]) == 3


def test_a_killed_worker_loses_no_waiting_poll(make_pipeline):
    """Waits live in Redis, not in the worker: after a SIGKILL between polls, another worker
    polls the job on schedule, long before the broker's visibility timeout (120 s here)."""
    p = make_pipeline(
        sandbox={"fast": False, "timings": {"sora": {"base_s": 6.0, "per_video_second_s": 0}}},
        env={"VIDEOQUEUE_POLL_FIRST_S": "2", "VIDEOQUEUE_POLL_CAP_S": "2"},
    )
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(job_id, settings=p.settings).polls >= 1, 20)
    p.workers[0].kill()
    killed_at = time.monotonic()
    p.start_worker()
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert time.monotonic() - killed_at < 30
    assert p.sandbox.stats()["totals"]["creates"] == 1
