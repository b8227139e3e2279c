"""A producer SIGKILLed in the middle of enqueue_batch: nothing of the batch runs, the caller
can name it by its batch id, and a retry with that id runs each request once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from producer import JobNotFound, JobStatus, cancel, enqueue, enqueue_batch, get, get_batch, wait
from producer.core.names import Lane
from producer.core.records import BatchState
from producer.core.store import store
from tests.e2e.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]

# Stages chunks of CHUNK jobs and SIGKILLs itself right after chunk DIE_AFTER is in Redis.
PRODUCER = """
import json, os, signal, sys
import producer.batches
from producer import enqueue_batch
from producer.core.settings import Settings
from producer.core.store import JobStore

args = json.loads(sys.stdin.read())
producer.batches.CHUNK_JOBS = args["chunk"]
stage = JobStore.stage_batch_chunk
written = []

def stage_then_die(self, *a, **k):
    stage(self, *a, **k)
    written.append(1)
    if len(written) == args["die_after"]:
        os.kill(os.getpid(), signal.SIGKILL)

JobStore.stage_batch_chunk = stage_then_die
enqueue_batch(args["requests"], batch_id=args["batch_id"], settings=Settings(**args["settings"]))
"""


def _kill_mid_batch(settings, requests, batch_id, *, chunk, die_after):
    fields = ("broker_url", "key_prefix", "queue", "url_allowlist")
    args = {"requests": requests, "batch_id": batch_id, "chunk": chunk, "die_after": die_after,
            "settings": {f: getattr(settings, f) for f in fields}}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER],
        input=json.dumps(args).encode(),
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9  # it really died mid-batch


def test_a_producer_killed_mid_batch_runs_nothing_and_a_retry_writes_each_request_once(
    make_pipeline,
):
    p = make_pipeline(workers=0)
    st = store(p.settings)
    n = 6000
    requests = [p.request(prompt=f"item {i}") for i in range(n)]
    for i in range(0, n, 3):
        requests[i]["idempotency_key"] = f"crash-{p.settings.key_prefix}-{i}"
    _kill_mid_batch(p.settings, requests, "campaign-7", chunk=2500, die_after=2)

    assert st.batch_progress("campaign-7") == (BatchState.STAGING, 5000)
    assert st.schedule.total() == 0  # nothing of it can run
    staged = get_batch("campaign-7", settings=p.settings)
    assert staged.state is BatchState.STAGING and staged.total == 5000
    assert st.redis.pttl(st.keys.job(staged.job_ids[0])) > 0  # abandoned, it would expire
    cancel(staged.job_ids[3], settings=p.settings)  # ended while staged: keeps its expiry

    assert enqueue_batch(requests, batch_id="campaign-7", settings=p.settings) == "campaign-7"
    batch = get_batch("campaign-7", settings=p.settings)
    assert batch.state is BatchState.RELEASED and batch.total == n
    assert len(set(batch.job_ids)) == n and batch.job_ids[:5000] == staged.job_ids
    assert st.redis.zcard(st.keys.schedule(Lane.SUBMIT)) == n
    records = st.get_many(batch.job_ids)
    assert [r.request["prompt"] for r in records.values()] == [f"item {i}" for i in range(n)]
    assert st.redis.pttl(st.keys.job(batch.job_ids[0])) == -1  # released: kept while it runs
    idem = st.keys.idempotency(requests[0]["idempotency_key"])
    assert st.redis.get(idem).decode() == batch.job_ids[0] and st.redis.pttl(idem) == -1
    cancelled_idem = st.keys.idempotency(requests[3]["idempotency_key"])
    assert st.redis.pttl(st.keys.job(batch.job_ids[3])) > 0 and st.redis.pttl(cancelled_idem) > 0

    client = redis.Redis.from_url(p.settings.broker_url)
    keys_before = sorted(client.scan_iter(f"{p.settings.key_prefix}*"))
    assert enqueue_batch(requests, batch_id="campaign-7", settings=p.settings) == "campaign-7"
    assert sorted(client.scan_iter(f"{p.settings.key_prefix}*")) == keys_before
    assert st.redis.zcard(st.keys.schedule(Lane.SUBMIT)) == n
    client.close()


def test_after_a_mid_batch_crash_and_a_retry_the_provider_sees_each_request_once(
    make_pipeline,
):
    p = make_pipeline()
    requests = [p.request(prompt=f"item {i}") for i in range(3)]
    _kill_mid_batch(p.settings, requests, "small-batch", chunk=1, die_after=2)
    time.sleep(1.5)  # workers running all along: a staged job is never submitted
    assert p.sandbox.stats(include_tasks=False)["totals"]["creates"] == 0

    enqueue_batch(requests, batch_id="small-batch", settings=p.settings)
    batch = eventually(lambda: (b := get_batch("small-batch", settings=p.settings)).done and b, 60)
    assert batch.counts == {JobStatus.COMPLETED.value: 3}
    assert p.sandbox.stats(include_tasks=False)["totals"]["creates"] == 3


def test_a_key_claimed_by_a_killed_producers_staged_batch_goes_to_the_next_job_that_runs(
    make_pipeline,
):
    """A staged job may never run (its producer died): its idempotency claim does not hold
    against a later enqueue or another batch's item, and a resumed batch then lists the items
    whose keys were taken under `deduplicated` instead of running them twice."""
    p = make_pipeline()
    keys = [f"staged-{p.settings.key_prefix}-{i}" for i in range(3)]
    requests = [p.request(prompt=f"item {i}", idempotency_key=k) for i, k in enumerate(keys)]
    _kill_mid_batch(p.settings, requests, "abandoned", chunk=1, die_after=2)
    staged = get_batch("abandoned", settings=p.settings).job_ids
    assert len(staged) == 2

    single = enqueue(p.request(idempotency_key=keys[0]), settings=p.settings)
    assert single not in staged
    assert wait(single, 30, settings=p.settings).status is JobStatus.COMPLETED
    enqueue_batch([p.request(idempotency_key=keys[1])], batch_id="other", settings=p.settings)
    (other,) = get_batch("other", settings=p.settings).job_ids
    assert other not in staged
    assert wait(other, 30, settings=p.settings).status is JobStatus.COMPLETED

    # The killed producer's caller retries: what was taken is deduplicated, the rest runs.
    enqueue_batch(requests, batch_id="abandoned", settings=p.settings)
    batch = eventually(lambda: (b := get_batch("abandoned", settings=p.settings)).done and b, 30)
    assert batch.deduplicated == {"0": single, "1": other}
    assert batch.total == 1 and batch.counts == {JobStatus.COMPLETED.value: 1}
    for dropped in staged[:2]:
        with pytest.raises(JobNotFound):
            get(dropped, settings=p.settings)
    assert p.sandbox.stats(include_tasks=False)["totals"]["creates"] == 3
    assert enqueue(p.request(idempotency_key=keys[0]), settings=p.settings) == single


def test_a_staged_job_cancelled_after_its_key_was_taken_leaves_the_takers_claim_alone(
    make_pipeline,
):
    p = make_pipeline(workers=0)
    st = store(p.settings)
    keys = [f"taken-{p.settings.key_prefix}-{i}" for i in range(2)]
    requests = [p.request(prompt=f"item {i}", idempotency_key=k) for i, k in enumerate(keys)]
    _kill_mid_batch(p.settings, requests, "cut-short", chunk=1, die_after=1)
    (staged,) = get_batch("cut-short", settings=p.settings).job_ids
    taker = enqueue(p.request(idempotency_key=keys[0]), settings=p.settings)
    cancel(staged, settings=p.settings)  # it ends: its claim would expire, but it is not its
    claim = st.keys.idempotency(keys[0])
    assert st.redis.get(claim).decode() == taker and st.redis.pttl(claim) == -1

    enqueue_batch(requests, batch_id="cut-short", settings=p.settings)
    batch = get_batch("cut-short", settings=p.settings)
    assert batch.deduplicated == {"0": taker} and batch.total == 1 and batch.ended == 0
    assert batch.counts == {JobStatus.QUEUED.value: 1}
    submits = {m.decode() for m in st.redis.zrange(st.keys.schedule(Lane.SUBMIT), 0, -1)}
    assert submits == {taker, *batch.job_ids}  # the taker's, and the batch's one job
