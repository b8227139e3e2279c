"""Batches through real workers: all-or-nothing, dedupe, one batch webhook, shared limits,
fairness and cancel."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
import redis

from producer import (
    InvalidRequest,
    JobStatus,
    cancel_batch,
    enqueue,
    enqueue_batch,
    get,
    get_batch,
    wait,
)
from producer.core.store import store
from tests.e2e.conftest import eventually
from tests.e2e.test_cli import run
from tests.public_objects import assert_public

# Generations that take about a second, so that several overlap at the provider.
ONE_SECOND = {"fast": False, "timings": {"sora": {"base_s": 1.0, "per_video_second_s": 0}}}


def _wait_batch(p, batch_id, timeout_s=90):
    return eventually(lambda: (b := get_batch(batch_id, settings=p.settings)).done and b,
                      timeout_s, 0.2)  # fmt: skip


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_one_invalid_item_enqueues_nothing_and_each_bad_item_is_named(make_pipeline):
    p = make_pipeline(workers=0)
    requests = [p.request() for _ in range(5)]
    requests[1]["size"] = "huge"
    requests[3]["webhook_url"] = "ftp://example.com/hook"
    client = redis.Redis.from_url(p.settings.broker_url)
    with pytest.raises(InvalidRequest) as e:
        enqueue_batch(requests, settings=p.settings)
    assert "item 1: size" in str(e.value) and "item 3: webhook_url" in str(e.value)
    assert {(x["index"], x["field"]) for x in e.value.errors} == {(1, "size"), (3, "webhook_url")}
    assert list(client.scan_iter(f"{p.settings.key_prefix}*")) == []
    assert store(p.settings).schedule.total() == 0
    client.close()


def test_an_empty_batch_or_a_bad_batch_webhook_is_refused(make_pipeline):
    p = make_pipeline(workers=0)
    with pytest.raises(InvalidRequest, match="at least one request"):
        enqueue_batch([], settings=p.settings)
    with pytest.raises(InvalidRequest, match="batch_webhook_url"):
        enqueue_batch([p.request()], batch_webhook_url="mailto:ops@example.com",
                      settings=p.settings)  # fmt: skip


def test_idempotency_keys_dedupe_within_the_batch_and_against_earlier_jobs(make_pipeline):
    p = make_pipeline()
    earlier = enqueue(p.request(idempotency_key="campaign-7"), settings=p.settings)
    batch_id = enqueue_batch(
        [p.request(idempotency_key="campaign-7"), p.request(idempotency_key="a"),
         p.request(idempotency_key="a"), p.request()],
        settings=p.settings,
    )  # fmt: skip
    batch = get_batch(batch_id, settings=p.settings)
    assert batch.total == 2 and len(batch.job_ids) == 2
    assert batch.deduplicated["0"] == earlier
    assert batch.deduplicated["2"] == batch.job_ids[0]
    _wait_batch(p, batch_id)
    assert wait(earlier, 30, settings=p.settings).status is JobStatus.COMPLETED
    assert p.sandbox.stats()["totals"]["tasks"] == 3


def test_the_batch_webhook_is_sent_exactly_once_with_two_workers(make_pipeline):
    p = make_pipeline(workers=2, concurrency=3)
    batch_id = enqueue_batch(
        [p.request(webhook_url=None) for _ in range(40)],
        batch_webhook_url=p.receiver.url, metadata={"campaign": "spring"}, settings=p.settings,
    )  # fmt: skip
    batch = _wait_batch(p, batch_id)
    assert batch.counts == {"completed": 40} and batch.ended == 40
    p.receiver.wait_for(lambda d: d.json and d.json["type"] == "batch.completed", timeout_s=20)
    time.sleep(2)  # a second send would come right after the first
    events = [d for d in p.receiver.deliveries if d.json["type"] == "batch.completed"]
    assert len(events) == 1 and events[0].verified
    data = events[0].json["data"]
    assert data["id"] == batch_id and data["counts"] == {"completed": 40}
    assert_public(data, "batch")
    assert data["metadata"] == {"campaign": "spring"}
    # the jobs themselves carried the batch's metadata and sent no job webhooks
    job = get(batch.job_ids[0], settings=p.settings)
    assert job.metadata == {"campaign": "spring"} and job.webhook is None
    both = {w.log_text().count("videoqueue.submit[") > 0 for w in p.workers}
    assert both == {True}, "both workers took part"


def test_the_rate_limit_and_in_flight_cap_hold_across_two_workers(make_pipeline):
    rate_per_s, burst, cap = 8.0, 4, 3
    p = make_pipeline(
        workers=2, concurrency=3,
        sandbox={**ONE_SECOND, "max_concurrent": cap},
        env={"VIDEOQUEUE_MAX_IN_FLIGHT": str(cap), "VIDEOQUEUE_RATE_LIMIT_PER_S": str(rate_per_s),
             "VIDEOQUEUE_RATE_BURST": str(burst)},
    )  # fmt: skip
    started = time.monotonic()
    batch_id = enqueue_batch([p.request() for _ in range(12)], settings=p.settings)
    batch = _wait_batch(p, batch_id, 120)
    elapsed_s = time.monotonic() - started
    assert batch.counts == {"completed": 12}
    stats = p.sandbox.stats()
    assert stats["totals"]["rate_limited"] == {}, "no 429 for the concurrency cap or the rate"
    assert max(k["max_concurrent"] for k in stats["keys"].values()) <= cap
    api_calls = stats["totals"]["creates"] + stats["totals"]["status_queries"]
    assert api_calls <= burst + rate_per_s * elapsed_s + 2
    assert all(t["creates"] == 1 for t in stats["tasks"].values())


def test_a_single_job_does_not_wait_behind_a_batch(make_pipeline):
    p = make_pipeline(sandbox=ONE_SECOND, env={"VIDEOQUEUE_MAX_IN_FLIGHT": "2"}, concurrency=2)
    batch_id = enqueue_batch([p.request() for _ in range(30)], settings=p.settings)
    at_provider = ("submitted", "processing")
    eventually(lambda: sum(get_batch(batch_id, settings=p.settings).counts.get(s, 0)
                           for s in at_provider) >= 2, 20)  # fmt: skip
    enqueued_at = time.time()
    single = wait(enqueue(p.request(), settings=p.settings), 60, settings=p.settings)
    assert single.status is JobStatus.COMPLETED
    assert _at(single.submitted_at) - enqueued_at < 5
    batch = get_batch(batch_id, settings=p.settings)
    assert batch.counts.get("queued", 0) >= 10, "the batch was far from done"
    cancel_batch(batch_id, settings=p.settings)


def test_cancel_batch_submits_nothing_more(make_pipeline):
    p = make_pipeline(sandbox=ONE_SECOND, env={"VIDEOQUEUE_MAX_IN_FLIGHT": "2"})
    batch_id = enqueue_batch([p.request() for _ in range(20)], settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["creates"] >= 2, 20)
    cancelled = cancel_batch(batch_id, settings=p.settings)
    creates_at_cancel = p.sandbox.stats()["totals"]["creates"]
    assert cancelled.cancelled and cancelled.counts.get("cancelled", 0) >= 15
    batch = _wait_batch(p, batch_id)
    time.sleep(2)
    assert p.sandbox.stats()["totals"]["creates"] == creates_at_cancel <= 3
    assert batch.ended == 20
    assert sum(batch.counts.values()) == 20


def test_batch_command_shows_progress_and_a_summary(make_pipeline, tmp_path):
    p = make_pipeline()
    path = tmp_path / "campaign.jsonl"
    path.write_text("\n".join(json.dumps(p.request()) for _ in range(5)) + "\n")
    done = run(p.env, "batch", str(path), "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout and "total" in done.stdout
    batch_id = done.stderr.split()[1].rstrip(":")
    status = json.loads(run(p.env, "batch-status", batch_id, "--json").stdout)
    assert status["counts"] == {"completed": 5} and len(status["job_ids"]) == 5
    path.write_text(json.dumps(p.request()) + "\n" + json.dumps(p.request(size="x")) + "\n")
    bad = run(p.env, "batch", str(path))
    assert bad.returncode == 2 and "item 1: size" in bad.stderr


def test_a_batch_whose_id_is_a_jobs_id_and_that_job_both_complete_with_their_own_webhooks(
    make_pipeline,
):
    """Batch ids are the caller's and job ids predictable: a batch named like a running job
    shares none of its schedule entry, lease, faults or event body."""
    timings = {"sora": {"base_s": 0.5, "per_video_second_s": 0.5}}
    p = make_pipeline(sandbox={"fast": False, "jitter": 0, "timings": timings})
    job_id = enqueue(p.request(duration=10), settings=p.settings)  # about 5.5 s
    eventually(lambda: get(job_id, settings=p.settings).provider_task_id, 20)
    # Its one job ends (about 1.5 s) while the other job is still at the provider.
    batch_id = enqueue_batch([p.request(duration=2)], batch_id=job_id,
                             batch_webhook_url=p.receiver.url, settings=p.settings)  # fmt: skip
    assert batch_id == job_id
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    eventually(lambda: get_batch(batch_id, settings=p.settings).finished_at, 30)
    p.receiver.wait_for(lambda d: d.json and d.json["type"] == "batch.completed", timeout_s=20)
    p.receiver.wait_for(
        lambda d: d.json and d.json["type"] == "video.completed" and d.json["data"]["id"] == job_id,
        timeout_s=20,
    )
    by_type: dict[str, list] = {}
    for d in p.receiver.deliveries:
        by_type.setdefault(d.json["type"], []).append(d.json["data"])
    (batch_event,) = by_type["batch.completed"]
    assert batch_event["id"] == batch_id and batch_event["total"] == 1
    assert "status" not in batch_event  # a batch's record, not the job's
    (batch_job,) = get_batch(batch_id, settings=p.settings).job_ids
    assert {e["id"] for e in by_type["video.completed"]} == {job_id, batch_job}
    own = next(e for e in by_type["video.completed"] if e["id"] == job_id)
    assert own["batch_id"] is None and own["status"] == "completed"
