"""Fair share, priorities and deadlines through real workers: a provider capped at a few slots,
generations of a fixed few seconds (the sandbox's timings), tenants with backlogs.

Times are the records' submitted_at (when the provider took each job), so each test reads the
order in which scarce slots went, not how fast the host is."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
import redis

from ops.admin import retry_job
from producer import JobStatus, enqueue, enqueue_batch, get, get_batch, wait
from producer.core.errors import InvalidRequest
from producer.core.records import JobRecord
from producer.core.tenant_policies import set_policy
from tests.e2e.conftest import env_of, eventually
from tests.e2e.test_cli import run


def _pipeline(make_pipeline: Any, cap: int, generation_s: float, **env: str) -> Any:
    timings = {"sora": {"base_s": generation_s, "per_video_second_s": 0.0}}
    return make_pipeline(
        sandbox={"fast": False, "jitter": 0.0, "timings": timings},
        env={"VIDEOQUEUE_MAX_IN_FLIGHT": str(cap), **env},
        concurrency=4,
    )


def _submitted_at(record: JobRecord) -> float:
    assert record.submitted_at is not None, (record.status, record.error)
    return datetime.fromisoformat(record.submitted_at.replace("Z", "+00:00")).timestamp()


def _order(p: Any, ids: list[str], timeout_s: float = 120) -> list[str]:
    """The jobs in the order the provider took them (each waited for to its end)."""
    records = [wait(i, timeout_s, settings=p.settings) for i in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    return [r.id for r in sorted(records, key=_submitted_at)]


@pytest.mark.parametrize("fair", [True, False])
def test_a_light_tenants_jobs_get_slots_promptly_past_a_heavy_tenants_backlog(make_pipeline, fair):
    """Fair share: the light tenant's jobs are taken within about one generation, not after
    the backlog. Due order (VIDEOQUEUE_FAIR_SHARE=false, the order before fair share): they
    wait behind it."""
    p = _pipeline(make_pipeline, cap=2, generation_s=1.5,
                  VIDEOQUEUE_FAIR_SHARE="true" if fair else "false")  # fmt: skip
    heavy = [enqueue(p.request(), tenant="heavy", settings=p.settings) for _ in range(10)]
    time.sleep(0.3)  # the backlog is due before the light tenant's jobs
    light = [enqueue(p.request(), tenant="light", settings=p.settings) for _ in range(2)]
    order = _order(p, heavy + light)
    light_places = sorted(order.index(j) for j in light)
    if fair:
        # The first two slots were the heavy tenant's; the light jobs take the next ones (give
        # or take one: a slot may free before the light tenant's second job is in).
        assert light_places[-1] <= 5, order
    else:
        assert light_places == [10, 11], order


def test_shares_of_slots_follow_the_tenants_weights(make_pipeline):
    p = _pipeline(make_pipeline, cap=2, generation_s=1.0)
    set_policy("gold", {"weight": 3}, settings=p.settings)
    gold, tin = [], []
    for _ in range(12):  # interleaved: due order would give each half
        gold.append(enqueue(p.request(), tenant="gold", settings=p.settings))
        tin.append(enqueue(p.request(), tenant="tin", settings=p.settings))
    order = _order(p, gold + tin)
    # While both had a backlog (the first 16 of 24): 3 to 1, give or take one.
    first = order[:16]
    assert 11 <= sum(j in gold for j in first) <= 13, order


def test_a_tenant_at_its_ceiling_waits_while_others_run(make_pipeline):
    p = _pipeline(make_pipeline, cap=3, generation_s=1.5)
    set_policy("capped", {"max_in_flight": 1}, settings=p.settings)
    capped = [enqueue(p.request(), tenant="capped", settings=p.settings) for _ in range(4)]
    other = [enqueue(p.request(), tenant="other", settings=p.settings) for _ in range(4)]
    at_provider = {JobStatus.SUBMITTED, JobStatus.PROCESSING}
    most = {"capped": 0, "other": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name, ids in (("capped", capped), ("other", other)):
                live = sum(get(i, settings=p.settings).status in at_provider for i in ids)
                most[name] = max(most[name], live)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _order(p, capped + other)
    finally:
        stop.set()
        sampler.join()
    assert most["capped"] == 1
    assert most["other"] == 2  # the slots the ceiling left: used, not idle


def test_reserved_slots_go_to_their_tenant_ahead_of_a_heavier_weight(make_pipeline):
    """Without its reservation the vip's second job would wait behind the whale's whole
    backlog (weight 100 to 1); with `reserved: 2` both its jobs take the next free slots."""
    # Generations of 15 min by their timing, ended by the test: the whale's first three hold
    # the three slots until the vip's jobs are in, however slow the host (with 1.5 s ones a
    # whale job could end, and a fourth take its slot, before the vip's were enqueued).
    p = _pipeline(make_pipeline, cap=3, generation_s=900.0)
    set_policy("whale", {"weight": 100}, settings=p.settings)
    set_policy("vip", {"reserved": 2}, settings=p.settings)
    whale = [enqueue(p.request(), tenant="whale", settings=p.settings) for _ in range(12)]
    eventually(lambda: all(get(j, settings=p.settings).submitted_at for j in whale[:3]), 30)
    vip = [enqueue(p.request(), tenant="vip", settings=p.settings) for _ in range(2)]
    with _ending_every_generation(p):
        order = _order(p, whale + vip)
    # The three slots free together: the vip jobs are claimed for two of them, and a whale job
    # claimed a moment later for the third may reach the provider first (submitted_at is when
    # the provider answered).
    assert {order.index(j) for j in vip} <= {3, 4, 5}, order


@contextmanager
def _ending_every_generation(p: Any) -> Iterator[None]:
    """End each task's generation at the sandbox as soon as it exists, until the block ends."""
    stop = threading.Event()

    def end_all() -> None:
        while not stop.is_set():
            for task_id in p.sandbox.stats()["tasks"]:
                p.sandbox.end_generation(task_id)
            stop.wait(0.2)

    ender = threading.Thread(target=end_all, daemon=True)
    ender.start()
    try:
        yield
    finally:
        stop.set()
        ender.join()


def test_a_tenants_jobs_take_slots_by_priority_higher_first(make_pipeline):
    p = _pipeline(make_pipeline, cap=1, generation_s=1.0)
    blocker = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(blocker, settings=p.settings).submitted_at, 30)
    ids = {prio: enqueue(p.request(priority=prio), settings=p.settings) for prio in (0, 5, -3, 2)}
    order = _order(p, [blocker, *ids.values()])
    assert order == [blocker, ids[5], ids[2], ids[0], ids[-3]]


def test_a_batchs_jobs_default_below_single_jobs(make_pipeline):
    p = _pipeline(make_pipeline, cap=1, generation_s=1.0)
    blocker = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(blocker, settings=p.settings).submitted_at, 30)
    batch_id = enqueue_batch([p.request(), p.request(priority=1)], settings=p.settings)
    single = enqueue(p.request(), settings=p.settings)
    first, urgent = get_batch(batch_id, settings=p.settings).job_ids
    assert get(first, settings=p.settings).priority == -1
    assert get(single, settings=p.settings).priority == 0
    order = _order(p, [blocker, first, urgent, single])
    assert order == [blocker, urgent, single, first]


def test_a_low_priority_job_ages_past_a_steady_stream_of_higher_ones(make_pipeline):
    """priority_aging_s 1: a job 3 steps lower goes first once it has waited 3 s longer, so a
    stream of priority 3 jobs, faster than the one slot serves them, does not starve it."""
    p = _pipeline(make_pipeline, cap=1, generation_s=0.5, VIDEOQUEUE_PRIORITY_AGING_S="1")
    low = enqueue(p.request(), settings=p.settings)
    stream: list[str] = []
    for _ in range(30):  # one every 0.3 s for 9 s; each holds the slot ~1 s
        stream.append(enqueue(p.request(priority=3), settings=p.settings))
        time.sleep(0.3)
    submitted = eventually(lambda: get(low, settings=p.settings).submitted_at, 60)
    late = [j for j in stream if (get(j, settings=p.settings).submitted_at or "~") > submitted]
    assert late, "the low job went only after the whole stream: it starved"
    _order(p, [low, *stream], timeout_s=180)


def test_a_job_past_its_own_deadline_at_the_provider_fails_and_is_cancelled_upstream(
    make_pipeline,
):
    p = make_pipeline(sandbox={"stuck_rate": 1.0})
    job_id = enqueue(p.request(deadline_s=2), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.FAILED and record.error.code == "deadline_exceeded"
    assert record.deadline_s == 2 and record.deadline_at is not None
    eventually(lambda: p.sandbox.stats(include_tasks=False)["totals"]["deleted"] == 1, 10)
    delivery = p.receiver.wait_for(lambda d: d.json["data"]["id"] == job_id, 10)
    assert delivery.json["type"] == "video.failed"
    assert delivery.json["data"]["error"]["code"] == "deadline_exceeded"


def test_a_job_still_waiting_for_a_slot_at_its_deadline_fails_without_reaching_the_provider(
    make_pipeline,
):
    p = _pipeline(make_pipeline, cap=1, generation_s=30)
    blocker = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(blocker, settings=p.settings).submitted_at, 30)
    started = time.monotonic()
    job_id = enqueue(p.request(deadline_s=1.5), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.FAILED and record.error.code == "deadline_exceeded"
    assert time.monotonic() - started < 6
    assert record.provider_task_id is None and record.attempts == 0
    assert len(p.sandbox.stats()["tasks"]) == 1  # the blocker's only
    delivery = p.receiver.wait_for(lambda d: d.json["data"]["id"] == job_id, 10)
    assert delivery.json["data"]["error"]["code"] == "deadline_exceeded"
    # An operator's retry gives it a new deadline, as long, from now.
    again = retry_job(p.settings, job_id)
    assert again.status is JobStatus.QUEUED and again.deadline_at > record.deadline_at


def test_priority_and_deadline_s_reach_every_record_and_bad_ones_write_nothing(bare_settings):
    s = bare_settings
    client = redis.Redis.from_url(s.broker_url)
    batch_id = enqueue_batch(
        [{"prompt": "a"}, {"prompt": "b", "priority": 4, "deadline_s": 60}], settings=s
    )
    plain, urgent = (get(j, settings=s) for j in get_batch(batch_id, settings=s).job_ids)
    assert (plain.priority, plain.deadline_s, plain.deadline_at) == (-1, None, None)
    assert (urgent.priority, urgent.deadline_s) == (4, 60.0)
    created = datetime.fromisoformat(urgent.created_at.replace("Z", "+00:00"))
    deadline_at = datetime.fromisoformat(urgent.deadline_at.replace("Z", "+00:00"))
    assert (deadline_at - created).total_seconds() == 60
    single = get(enqueue({"prompt": "c", "priority": -5}, settings=s), settings=s)
    assert single.priority == -5 and single.public()["priority"] == -5
    keys_before = set(client.scan_iter(f"{s.key_prefix}*"))
    with pytest.raises(InvalidRequest) as refused:
        enqueue({"prompt": "x", "deadline_s": -1}, settings=s)
    assert "deadline_s" in str(refused.value)
    with pytest.raises(InvalidRequest) as refused:
        enqueue_batch([{"prompt": "ok"}, {"prompt": "x", "priority": "9"}], settings=s)
    assert "item 1: priority" in str(refused.value)
    assert set(client.scan_iter(f"{s.key_prefix}*")) == keys_before
    client.close()


def test_the_submit_command_takes_priority_and_deadline_s(bare_settings):
    env = env_of(bare_settings)
    made = run(env, "submit", "--prompt", "x", "--priority", "3", "--deadline-s", "120", "--json")
    assert made.returncode == 0, made.stderr
    record = get(json.loads(made.stdout)["id"], settings=bare_settings)
    assert (record.priority, record.deadline_s) == (3, 120.0)
    refused = run(env, "submit", "--prompt", "x", "--deadline-s", "0")
    assert refused.returncode == 2 and "deadline_s" in refused.stderr
