"""Retention against real Redis: a finished job's keys (and a batch's) expire
VIDEOQUEUE_RECORD_TTL_S after it ends and none while it runs; dead letters and the
unknown-status counter stay bounded."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

import producer.core.store
from producer import JobNotFound, JobStatus, enqueue, enqueue_batch, get, get_batch, wait
from producer.core.records import WebhookState
from producer.core.store import JobStore, store
from tests.e2e.conftest import eventually, fresh_prefix

TTL_S = 4.0
# Generations that take about two seconds, so that a running job can be looked at.
SLOW = {"fast": False, "timings": {"sora": {"base_s": 2.0, "per_video_second_s": 0}}}


def _names(client: redis.Redis, prefix: str, *ids: str) -> list[str]:
    """Every key under prefix whose name holds one of ids."""
    return [k.decode() for k in client.scan_iter(f"{prefix}*") if any(i in k.decode() for i in ids)]


def test_a_finished_jobs_keys_expire_after_the_ttl_and_none_while_it_runs(make_pipeline):
    p = make_pipeline(sandbox=SLOW, env={"VIDEOQUEUE_RECORD_TTL_S": str(TTL_S)})
    st = store(p.settings)
    idem = f"order-{uuid.uuid4().hex}"
    job_id = enqueue(p.request(idempotency_key=idem), settings=p.settings)
    job_key, idem_key = st.keys.job(job_id), st.keys.idempotency(idem)
    eventually(lambda: get(job_id, settings=p.settings).status is JobStatus.PROCESSING, 20)
    assert st.redis.pttl(job_key) == -1 and st.redis.pttl(idem_key) == -1  # kept while it runs

    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    eventually(lambda: get(job_id, settings=p.settings).webhook.state is WebhookState.DELIVERED)
    keys = [job_key, idem_key, st.keys.event_body(job_id)]
    ttls_ms = [st.redis.pttl(k) for k in keys]
    assert all(0 < t <= TTL_S * 1000 for t in ttls_ms), dict(zip(keys, ttls_ms, strict=True))

    time.sleep(max(ttls_ms) / 1000 + 0.2)
    with pytest.raises(JobNotFound):
        get(job_id, settings=p.settings)
    assert _names(st.redis, p.settings.key_prefix, job_id) == []
    assert not st.redis.exists(idem_key)


def test_a_batchs_keys_expire_with_its_last_job(make_pipeline):
    p = make_pipeline(env={"VIDEOQUEUE_RECORD_TTL_S": str(TTL_S)})
    st = store(p.settings)
    batch_id = enqueue_batch(
        [p.request() for _ in range(3)], batch_webhook_url=p.receiver.url, settings=p.settings
    )
    batch_keys = [st.keys.batch(batch_id), st.keys.batch_jobs(batch_id),
                  st.keys.batch_counts(batch_id)]  # fmt: skip
    assert [st.redis.pttl(k) for k in batch_keys] == [-1, -1, -1]
    batch = eventually(lambda: (b := get_batch(batch_id, settings=p.settings)).done and b, 60)
    eventually(
        lambda: (
            (b := get_batch(batch_id, settings=p.settings)).webhook
            and b.webhook.state is WebhookState.DELIVERED
        )
    )
    last_ms = max(st.redis.pttl(st.keys.job(j)) for j in batch.job_ids)
    for key in batch_keys:
        assert abs(st.redis.pttl(key) - last_ms) < 1000  # with the last job's record
    assert 0 < st.redis.pttl(st.keys.batch_event_body(batch_id)) <= TTL_S * 1000

    time.sleep(max(st.redis.pttl(k) for k in batch_keys) / 1000 + 0.2)
    with pytest.raises(JobNotFound):
        get_batch(batch_id, settings=p.settings)
    assert _names(st.redis, p.settings.key_prefix, batch_id, *batch.job_ids) == []


def test_a_batch_webhook_still_retrying_when_the_batch_expires_leaves_the_schedule(
    make_pipeline,
):
    # Records kept 1 s; the receiver refuses every delivery, retried 3 s apart: the batch's
    # keys are gone by the second attempt.
    p = make_pipeline(
        env={"VIDEOQUEUE_RECORD_TTL_S": "1", "VIDEOQUEUE_WEBHOOK_SCHEDULE_S": "[0, 3, 3, 3, 3]",
             "VIDEOQUEUE_LEASE_S": "2"},
    )  # fmt: skip
    p.receiver.fail_first = 1000
    st = store(p.settings)
    batch_id = enqueue_batch(
        [p.request(webhook_url=None) for _ in range(2)],
        batch_webhook_url=p.receiver.url,
        settings=p.settings,
    )
    p.receiver.wait_for(timeout_s=60)  # its first attempt, refused
    eventually(lambda: not st.redis.exists(st.keys.batch(batch_id)), 10)
    eventually(lambda: st.schedule.entry(batch_id) is None, 15)
    attempts = len(p.receiver.deliveries)
    time.sleep(4)  # past the lease and the next retry
    assert len(p.receiver.deliveries) == attempts
    assert st.schedule.entry(batch_id) is None and not st.redis.exists(st.keys.batch(batch_id))


@pytest.fixture
def bare_store(redis_url):
    prefix = fresh_prefix()
    st = JobStore(redis.Redis.from_url(redis_url), prefix, record_ttl_s=0.5)
    yield st
    for key in st.redis.scan_iter(f"{prefix}*"):
        st.redis.delete(key)
    st.redis.close()


def test_dead_letters_are_dropped_past_the_ttl_and_past_the_cap(bare_store, monkeypatch):
    st = bare_store
    st.record_dead_letter("msg_old", {"state": "dead"}, "job_old")
    time.sleep(0.6)
    monkeypatch.setattr(producer.core.store, "MAX_DEAD_LETTERS", 3)
    for i in range(5):
        st.record_dead_letter(f"msg_{i}", {"state": "dead", "n": i}, f"job_{i}")
    kept = {k.decode() for k in st.redis.hkeys(st.keys.dead_letters())}
    assert kept == {"msg_2", "msg_3", "msg_4"}  # the expired one and the two oldest went
    assert st.redis.zcard(st.keys.dead_letters_by_time()) == 3


def test_the_unknown_status_counter_keeps_a_bounded_number_of_words(bare_store):
    st = bare_store
    for i in range(producer.core.store.MAX_STATUS_WORDS + 5):
        st.count_unknown_status(f"word-{i}")
    st.count_unknown_status("word-0")
    counts = {k.decode(): int(v) for k, v in st.redis.hgetall(st.keys.unknown_statuses()).items()}
    assert len(counts) == producer.core.store.MAX_STATUS_WORDS + 1
    assert counts["(other)"] == 5 and counts["word-0"] == 2
