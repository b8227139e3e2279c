"""Nothing lost, nothing billed twice: workers SIGKILLed at every step, and the broker's
messages deleted, while jobs run. The job records and their schedule entries are the truth;
a claim that never finished comes due again when its lease runs out."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from bench.faults import kill_redis
from ops.serve import free_port
from ops.stack import redis_server
from producer import JobStatus, enqueue, enqueue_batch, get, get_batch, wait
from producer.core.limits import account_of
from producer.core.names import queues
from producer.core.records import JobRecord
from producer.core.store import store
from tests.e2e.conftest import API_KEY, BUCKET, Pipeline, eventually

# Leases this short keep the matrix quick; the contract's default is tested on its own.
SHORT_LEASE = {"VIDEOQUEUE_LEASE_S": "4", "VIDEOQUEUE_MAX_IN_FLIGHT": "4"}
CONTRACT_S = 60


def _kill_host(p: Pipeline) -> None:
    """SIGKILL the worker's main process and its pool at once, then start another worker."""
    p.workers[-1].kill()
    p.start_worker()


def _kill_pool_child(p: Pipeline) -> None:
    """SIGKILL the worker's pool processes; its main process lives on and replaces them."""
    worker = p.workers[-1]
    for pid in worker.alive_pids():
        if pid != worker.pid:
            os.kill(pid, signal.SIGKILL)


def _kill_main_process(p: Pipeline) -> None:
    """SIGKILL only the worker's main process (its pump and consumer); its orphaned pool
    processes are left to themselves. Another worker takes over."""
    os.kill(p.workers[-1].pid, signal.SIGKILL)
    p.start_worker()


KILLS = {"host": _kill_host, "main process": _kill_main_process, "pool child": _kill_pool_child}


def _check_done(p: Pipeline, s3_client, ids: list[str], killed_at: float) -> list[JobRecord]:
    """Every job completed with the sandbox's bytes, one provider task each, slots free."""
    records = [wait(i, CONTRACT_S + 30, settings=p.settings) for i in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    assert time.monotonic() - killed_at < CONTRACT_S
    stats = p.sandbox.stats()
    assert stats["totals"]["tasks"] == len(ids)
    assert len({r.provider_task_id for r in records}) == len(ids)
    p.sandbox.configure(slow_rate=0.0, file_stream_s=0.0)
    for r in records:
        data = s3_client.get_object(Bucket=BUCKET, Key=r.output.key)["Body"].read()
        assert data == p.served_bytes(r.provider_task_id)
        assert hashlib.sha256(data).hexdigest() == r.output.sha256
    st = store(p.settings)
    eventually(lambda: st.redis.zcard(st.keys.in_flight(account_of(API_KEY))) == 0, 10)
    return records


# Where the kill lands: the sandbox knobs that hold the step there, and when it is there.
def _submitting(p: Pipeline) -> bool:
    return p.sandbox.stats()["totals"]["creates"] >= 1


def _polling(p: Pipeline) -> bool:
    return p.sandbox.stats()["totals"]["status_queries"] >= 1


def _copying(p: Pipeline) -> bool:
    return p.sandbox.stats()["totals"]["downloads"] >= 1


def _notifying(p: Pipeline) -> bool:
    return len(p.receiver.deliveries) >= 1


STEPS: dict[str, tuple[dict, Callable[[Pipeline], bool]]] = {
    "mid-submit": ({"slow_rate": 1.0, "slow_s": 2.5, "slow_routes": ["create"]}, _submitting),
    "mid-poll": ({"slow_rate": 1.0, "slow_s": 2.5, "slow_routes": ["status"]}, _polling),
    "mid-copy": ({"file_stream_s": 6.0, "file_padding_bytes": 6 << 20}, _copying),
    "mid-notify": ({}, _notifying),
}


@pytest.mark.parametrize("kill", KILLS.values(), ids=KILLS.keys())
@pytest.mark.parametrize(("knobs", "there"), STEPS.values(), ids=STEPS.keys())
def test_a_worker_killed_at_any_step_loses_no_job_and_bills_none_twice(
    make_pipeline, s3_client, kill, knobs, there
):
    p = make_pipeline(sandbox=knobs, env=SHORT_LEASE)
    if there is _notifying:
        p.receiver.delay_s = 4.0
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(2)]
    eventually(lambda: there(p), 30, every_s=0.02)
    kill(p)
    killed_at = time.monotonic()
    p.receiver.delay_s = 0.0
    p.sandbox.configure(slow_rate=0.0)
    records = _check_done(p, s3_client, ids, killed_at)
    if there is _notifying:
        for job_id in ids:
            eventually(lambda j=job_id: get(j, settings=p.settings).webhook.state.value
                       == "delivered", 30)  # fmt: skip
            sent = [d for d in p.receiver.deliveries
                    if json.loads(d.body)["data"]["id"] == job_id]  # fmt: skip
            assert sent and len({d.headers["webhook-id"] for d in sent}) == 1
        records = [get(i, settings=p.settings) for i in ids]
    assert any(r.recoveries >= 1 for r in records)


def test_with_default_settings_a_killed_hosts_jobs_move_again_within_a_minute(
    make_pipeline, s3_client
):
    """The contract: default lease, a worker SIGKILLed right after its pump claimed work
    (before or while the steps ran): every job it held ends within 60 s of the kill."""
    p = make_pipeline(sandbox={"file_stream_s": 3.0}, env={"VIDEOQUEUE_LEASE_S": "20"})
    st = store(p.settings)
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(6)]
    eventually(lambda: st.redis.hlen(st.keys.leases()) >= 1, 20, every_s=0.005)
    _kill_host(p)
    _check_done(p, s3_client, ids, time.monotonic())


def _delete_broker_messages(p: Pipeline) -> None:
    """What a `celery purge`, a lost AOF tail or a flushed broker does: every queued and
    every delivered-but-unacknowledged message is gone."""
    client = store(p.settings).redis
    client.delete(*queues(p.settings.queue), "unacked", "unacked_index")


def test_deleting_the_broker_messages_before_any_worker_starts_loses_no_job(
    make_pipeline, s3_client
):
    p = make_pipeline(workers=0)
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(3)]
    batch_id = enqueue_batch([p.request() for _ in range(3)], settings=p.settings)
    ids += get_batch(batch_id, settings=p.settings).job_ids
    _delete_broker_messages(p)
    p.start_worker()
    killed_at = time.monotonic()
    _check_done(p, s3_client, ids, killed_at)
    eventually(lambda: get_batch(batch_id, settings=p.settings).done, 20)


def test_deleting_the_broker_messages_while_a_killed_worker_was_copying_loses_no_job(
    make_pipeline, s3_client
):
    p = make_pipeline(sandbox={"file_stream_s": 4.0, "file_padding_bytes": 4 << 20},
                      env=SHORT_LEASE)  # fmt: skip
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(3)]
    eventually(lambda: _copying(p), 30, every_s=0.02)
    p.workers[-1].kill()
    _delete_broker_messages(p)
    killed_at = time.monotonic()
    p.start_worker()
    records = _check_done(p, s3_client, ids, killed_at)
    assert sum(r.recoveries for r in records) >= 1


def test_a_worker_whose_redis_restarts_mid_step_keeps_running_and_its_jobs_complete(
    make_pipeline, s3_client, tmp_path
):
    """Redis goes away while steps run (their messages unacknowledged) and comes back on its
    AOF: the worker reconnects rather than exiting, and every job completes once, from the
    schedule. (kombu's restore of unacknowledged messages on close used to crash it.)"""
    port = free_port()
    workdir = tmp_path / "redis"
    with redis_server(port, workdir) as url:
        p = make_pipeline(sandbox={"file_stream_s": 4.0, "file_padding_bytes": 4 << 20},
                          env={**SHORT_LEASE, "VIDEOQUEUE_BROKER_URL": url})  # fmt: skip
        ids = [enqueue(p.request(), settings=p.settings) for _ in range(6)]
        eventually(lambda: _copying(p), 30, every_s=0.02)
        kill_redis(url)  # a crash: connections reset, not closed politely
    time.sleep(1.0)  # down long enough for every connection to notice
    with redis_server(port, workdir):
        worker = p.workers[0]
        killed_at = time.monotonic()
        _check_done(p, s3_client, ids, killed_at)
        assert worker.pid in worker.alive_pids(), worker.log_text()[-3000:]
        assert "Unrecoverable error" not in worker.log_text()
        for w in p.workers:
            w.stop()
