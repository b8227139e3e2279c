"""The durable schedule's scripts against a real Redis, without workers: claims, leases,
limits, placements. (The pipeline tests run the same scripts through real workers.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producer.core.limits import ProviderLimits
from producer.core.names import Lane
from producer.core.requests import parse_request
from producer.core.settings import Settings
from producer.core.store import JobStore
from producer.jobs import new_record
from tests.e2e.conftest import fresh_prefix
from worker.leases import Lease
from worker.pump import Pump


@pytest.fixture
def deployment(redis_url: str) -> Iterator[tuple[Settings, JobStore]]:
    prefix = fresh_prefix()
    settings = Settings(key_prefix=prefix, queue=prefix, broker_url=redis_url, lease_s=5,
                        dispatch_ahead=3, poll_batch_size=4, api_key="sk-schedule")  # fmt: skip
    st = JobStore(redis.Redis.from_url(redis_url), prefix)
    yield settings, st
    for key in st.redis.scan_iter(f"{prefix}*"):
        st.redis.delete(key)


def _jobs(
    settings: Settings, st: JobStore, n: int, lane: Lane = Lane.POLL, **request: Any
) -> list[str]:
    ids = []
    for _ in range(n):
        record = new_record(parse_request({"prompt": "x", **request}), settings)
        st.create(record, None)
        st.schedule.place(record.id, lane)
        ids.append(record.id)
    return ids


def _messages(st: JobStore, queue: str) -> list[list]:
    """The args of every message on queue, oldest first."""
    raw = st.redis.lrange(queue, 0, -1)
    return [json.loads(json.loads(m)["body"])[0] for m in reversed(raw)]


def test_a_claim_leases_due_entries_and_queues_one_message_per_batch(deployment):
    settings, st = deployment
    ids = _jobs(settings, st, 6)
    claimed = Pump(st.redis, settings).claim_due()[Lane.POLL]
    assert claimed.entries == 6
    messages = _messages(st, f"{settings.queue}.poll")
    assert [len(m[0]) for m in messages] == [4, 2]  # poll_batch_size 4
    assert sorted(messages[0][0] + messages[1][0]) == sorted(ids)
    assert all(m[2] == "poll" and m[3] == [] for m in messages)
    lane, due = st.schedule.entry(ids[0])
    assert lane is Lane.POLL and due > time.time() + 4  # pushed a lease ahead
    assert Lease(st.schedule, Lane.POLL, messages[0][1], "x").held(ids) == messages[0][0]


def test_a_full_queue_gets_no_more_messages(deployment):
    settings, st = deployment
    _jobs(settings, st, 20)
    pump = Pump(st.redis, settings)
    assert pump.claim_due()[Lane.POLL].entries == 12  # 3 messages of 4
    assert pump.claim_due()[Lane.POLL].entries == 0
    assert st.redis.llen(f"{settings.queue}.poll") == 3


def test_an_expired_lease_is_claimed_again_as_a_recovery_and_the_old_claim_holds_nothing(
    deployment,
):
    settings, st = deployment
    (job_id,) = _jobs(settings, st, 1, Lane.FINALIZE)
    pump = Pump(st.redis, settings)
    pump.claim_due()
    first = _messages(st, settings.queue)[0]
    st.redis.delete(settings.queue)  # the message is lost
    st.redis.zadd(st.keys.schedule(Lane.FINALIZE), {job_id: time.time() - 1})  # lease ran out
    pump.claim_due()
    second = _messages(st, settings.queue)[0]
    assert second[3] == [job_id]  # flagged as a recovery
    assert Lease(st.schedule, Lane.FINALIZE, first[1], "x").held([job_id]) == []
    assert Lease(st.schedule, Lane.FINALIZE, second[1], "x").held([job_id]) == [job_id]
    # the superseded claim cannot move the entry any more
    assert st.schedule.place(job_id, None, token=first[1]) == 0
    assert st.schedule.entry(job_id)[0] is Lane.FINALIZE
    assert st.schedule.place(job_id, None, token=second[1]) == 1
    assert st.schedule.entry(job_id) is None


def test_placing_an_entry_in_one_lane_removes_it_from_every_other(deployment):
    settings, st = deployment
    (job_id,) = _jobs(settings, st, 1, Lane.SUBMIT)
    for lane in (Lane.POLL, Lane.FINALIZE, Lane.NOTIFY):
        st.schedule.place(job_id, lane, 3.0)
        assert st.schedule.entry(job_id)[0] is lane
        assert st.schedule.total() == 1


def test_submits_take_provider_slots_higher_priority_first_then_in_due_order(deployment):
    settings, st = deployment
    settings = settings.model_copy(update={"max_in_flight": 3, "dispatch_ahead": 10})
    low = _jobs(settings, st, 3, Lane.SUBMIT, priority=-1)  # a batch job's default
    high = _jobs(settings, st, 2, Lane.SUBMIT)
    claimed = Pump(st.redis, settings).claim_due()
    assert claimed[Lane.SUBMIT].entries == 3
    limits = ProviderLimits(st.redis, settings)
    holders = {m.decode() for m in st.redis.zrange(limits.in_flight, 0, -1)}
    assert holders == {*high, low[0]}
    # a slot given back goes to the next job in order
    limits.release(high[0], "default")
    assert Pump(st.redis, settings).claim_due()[Lane.SUBMIT].entries == 1
    assert st.redis.zscore(limits.in_flight, low[1]) is not None


def test_a_dead_submits_slot_frees_with_its_lease(deployment):
    settings, st = deployment
    settings = settings.model_copy(update={"max_in_flight": 1, "dispatch_ahead": 10})
    first, second = _jobs(settings, st, 2, Lane.SUBMIT)
    limits = ProviderLimits(st.redis, settings)
    assert Pump(st.redis, settings).claim_due()[Lane.SUBMIT].entries == 1
    assert Pump(st.redis, settings).claim_due()[Lane.SUBMIT].entries == 0  # no slot
    # the first submit's worker died: its lease and the slot it held both run out
    st.redis.zadd(limits.in_flight, {first: time.time() - 1})
    assert Pump(st.redis, settings).claim_due()[Lane.SUBMIT].entries == 1
    assert st.redis.zscore(limits.in_flight, second) is not None


def test_the_rate_limit_is_spent_at_the_claim(deployment):
    settings, st = deployment
    settings = settings.model_copy(
        update={"rate_limit_per_s": 0.001, "rate_burst": 5, "dispatch_ahead": 100}
    )
    _jobs(settings, st, 8)
    pump = Pump(st.redis, settings)
    assert pump.claim_due()[Lane.POLL].entries == 5  # the burst, then nothing for a while
    assert pump.claim_due()[Lane.POLL].entries == 0


def test_a_cancel_nudges_an_unclaimed_entry_to_now_and_leaves_a_claimed_one(deployment):
    settings, st = deployment
    a, b = _jobs(settings, st, 2, Lane.POLL)
    st.schedule.place(a, Lane.POLL, 300.0)
    st.schedule.nudge(a)
    assert st.schedule.entry(a)[1] <= time.time() + 0.5
    st.redis.hset(st.keys.leases(), b, "claim")
    st.schedule.place(b, Lane.POLL, 300.0, token="claim")
    st.redis.hset(st.keys.leases(), b, "claim")
    st.schedule.nudge(b)
    assert st.schedule.entry(b)[1] > time.time() + 200


def test_a_callback_makes_an_unclaimed_poll_due_now_and_a_claimed_one_due_when_placed(deployment):
    """A callback that lands while a poll holds the entry is not lost to the poll's backoff:
    the placement sees a mark it did not read and makes the entry due now; a placement that
    read the mark (the poll that answered it) keeps its own delay."""
    settings, st = deployment
    a, b, c = _jobs(settings, st, 3, Lane.POLL)
    st.schedule.place(a, Lane.POLL, 300.0)
    assert st.schedule.hasten(a) == 1
    assert st.schedule.entry(a)[1] <= time.time() + 0.5
    st.redis.hset(st.keys.leases(), b, "claim")
    assert st.schedule.hasten(b) == 2
    st.schedule.place(b, Lane.POLL, 300.0, token="claim")  # the poll read no mark
    assert st.schedule.entry(b)[1] <= time.time() + 0.5
    st.redis.hset(st.keys.leases(), c, "claim")
    st.schedule.hasten(c)
    mark = st.schedule.hastened_marks([a, b, c])[c]
    st.schedule.place(c, Lane.POLL, 300.0, token="claim", seen=mark)  # it read this one
    assert st.schedule.entry(c)[1] > time.time() + 200
    st.schedule.place(c, Lane.FINALIZE, 0.0)  # only the poll lane is hastened
    assert st.schedule.entry(c)[0] is Lane.FINALIZE


def _two_providers(settings: Settings, tmp_path, cap_a: int) -> Settings:
    path = tmp_path / "providers.toml"
    path.write_text(
        f'[[providers]]\nname = "a"\nbase_url = "http://a.test"\napi_key_env = "VQ_SCHED_A"\n'
        f"max_in_flight = {cap_a}\n"
        '[[providers]]\nname = "b"\nbase_url = "http://b.test"\napi_key_env = "VQ_SCHED_B"\n'
        "max_in_flight = 5\n"
    )
    return settings.model_copy(update={"providers_file": path, "dispatch_ahead": 10})


def test_a_submit_takes_a_slot_at_the_first_provider_of_its_route_with_one_free(
    deployment, tmp_path, monkeypatch
):
    monkeypatch.setenv("VQ_SCHED_A", "sk-a")
    monkeypatch.setenv("VQ_SCHED_B", "sk-b")
    settings, st = deployment
    settings = _two_providers(settings, tmp_path, cap_a=1)
    limits = ProviderLimits(st.redis, settings)
    unrouted, first, second, pinned = _jobs(settings, st, 4, Lane.SUBMIT)
    limits.set_route(first, ["a", "b"])
    limits.set_route(second, ["a", "b"])
    limits.set_route(pinned, ["a"])
    assert Pump(st.redis, settings).claim_due()[Lane.SUBMIT].entries == 3
    slots_a, slots_b = (st.keys.in_flight(limits.accounts[n]) for n in "ab")
    # a's one slot to the first routed job; the second moved on to b; the one pinned to a
    # waits; the unrouted one is claimed without a slot (its step routes it).
    assert {m.decode() for m in st.redis.zrange(slots_a, 0, -1)} == {first}
    assert {m.decode() for m in st.redis.zrange(slots_b, 0, -1)} == {second}
    assert limits.route(second) == ["b"] and limits.route(first) == ["a", "b"]
    assert limits.route(unrouted) is None
    assert st.redis.hget(st.keys.leases(), pinned) is None
    limits.release(first, "default")
    assert Pump(st.redis, settings).claim_due()[Lane.SUBMIT].entries == 1
    assert st.redis.zscore(slots_a, pinned) is not None


def _two_entries(tmp_path, monkeypatch, settings: Settings, a: str, b: str) -> Settings:
    """Settings whose providers file lists a and b (TOML tables' bodies); both read their key
    from variables the test sets."""
    path = tmp_path / "providers.toml"
    path.write_text(f"[[providers]]\n{a}\n[[providers]]\n{b}\n")
    return settings.model_copy(update={"providers_file": path})


def test_two_entries_sharing_a_key_share_its_slots_and_tokens(deployment, tmp_path, monkeypatch):
    """Entries sharing one API key (two variables, one value) spend one account's cap and
    bucket, whichever entry each job goes through."""
    settings, st = deployment
    monkeypatch.setenv("VQTEST_SHARED_1", "sk-shared-key")
    monkeypatch.setenv("VQTEST_SHARED_2", "sk-shared-key")
    common = 'base_url = "http://shared.test"\nmax_in_flight = 2\nrate_limit_per_s = 0.01'
    settings = _two_entries(
        tmp_path, monkeypatch, settings.model_copy(update={"dispatch_ahead": 10}),
        f'name = "a"\napi_key_env = "VQTEST_SHARED_1"\n{common}\nrate_burst = 3',
        f'name = "b"\napi_key_env = "VQTEST_SHARED_2"\n{common}\nrate_burst = 3',
    )  # fmt: skip
    limits = ProviderLimits(st.redis, settings)
    assert len(limits.slot_keys) == 1
    submits = _jobs(settings, st, 6, Lane.SUBMIT)
    for i, job_id in enumerate(submits):
        limits.set_route(job_id, ["a" if i % 2 else "b"])
    pump = Pump(st.redis, settings)
    claimed = pump.claim_due()[Lane.SUBMIT].entries
    assert claimed == 2 and st.redis.zcard(limits.slot_keys[0]) == 2
    # One token per claim in all: the third of the burst is left for one of their polls.
    submitted = [m for m in submits if st.redis.zscore(limits.slot_keys[0], m) is not None]
    assert {limits.route(m)[0] for m in submitted} == {"a", "b"}
    for job_id in submitted:
        st.schedule.place(job_id, Lane.POLL)
    assert pump.claim_due()[Lane.POLL].entries == 1
    assert pump.claim_due()[Lane.POLL].entries == 0


def test_jobs_for_a_full_provider_do_not_hold_back_another_providers_jobs(
    deployment, tmp_path, monkeypatch
):
    """More due jobs for a saturated provider than any claim looks at ahead of jobs for a
    free one: the free one's jobs are claimed within a few claims, the full one takes no
    more than its cap."""
    settings, st = deployment
    monkeypatch.setenv("VQTEST_KEY_FULL", "sk-full")
    monkeypatch.setenv("VQTEST_KEY_FREE", "sk-free")
    settings = _two_entries(
        tmp_path, monkeypatch, settings.model_copy(update={"dispatch_ahead": 10}),
        'name = "a"\nbase_url = "http://a.test"\napi_key_env = "VQTEST_KEY_FULL"\n'
        "max_in_flight = 1",
        'name = "b"\nbase_url = "http://b.test"\napi_key_env = "VQTEST_KEY_FREE"\n'
        "max_in_flight = 5",
    )  # fmt: skip
    limits = ProviderLimits(st.redis, settings)
    waiting = _jobs(settings, st, 300, Lane.SUBMIT)
    for job_id in waiting:
        limits.set_route(job_id, ["a"])
    behind = _jobs(settings, st, 3, Lane.SUBMIT)
    for job_id in behind:
        limits.set_route(job_id, ["b"])
    pump = Pump(st.redis, settings)
    claimed: set[str] = set()
    for _ in range(5):
        pump.claim_due()
        claimed |= {m for msg in _messages(st, settings.queue) for m in msg[0]}
        st.redis.delete(settings.queue)  # the workers took the messages
    assert set(behind) <= claimed
    assert len(claimed & set(waiting)) == 1 and waiting[0] in claimed
    # A slot given back goes to the next of the full provider's jobs, in order.
    limits.release(waiting[0], "default")
    pump.claim_due()
    assert [m for msg in _messages(st, settings.queue) for m in msg[0]] == [waiting[1]]


def test_jobs_parked_under_limits_since_removed_are_claimed_again(
    deployment, tmp_path, monkeypatch
):
    """Jobs parked for a provider's cap, then the cap removed from the providers file: the
    new claims, which no longer read that cap's parked set, still find them."""
    settings, st = deployment
    monkeypatch.setenv("VQTEST_KEY_FULL", "sk-full")
    monkeypatch.setenv("VQTEST_KEY_FREE", "sk-free")
    b = 'name = "b"\nbase_url = "http://b.test"\napi_key_env = "VQTEST_KEY_FREE"'
    a = 'name = "a"\nbase_url = "http://a.test"\napi_key_env = "VQTEST_KEY_FULL"'
    capped = _two_entries(tmp_path, monkeypatch, settings, f"{a}\nmax_in_flight = 1", b)
    limits = ProviderLimits(st.redis, capped)
    waiting = _jobs(capped, st, 6, Lane.SUBMIT)
    for job_id in waiting:
        limits.set_route(job_id, ["a"])
    pump = Pump(st.redis, capped)
    pump.claim_due()
    st.redis.delete(settings.queue)
    assert all(st.schedule.entry(m)[1] < time.time() for m in waiting[1:])  # parked: due
    assert st.redis.zcount(st.keys.schedule(Lane.SUBMIT), "-inf", time.time()) < 5

    (tmp_path / "uncapped").mkdir()
    uncapped = _two_entries(tmp_path / "uncapped", monkeypatch, settings, a, b)
    pump = Pump(st.redis, uncapped)
    claimed: set[str] = set()
    for _ in range(40):
        pump.claim_due()
        claimed |= {m for msg in _messages(st, settings.queue) for m in msg[0]}
        st.redis.delete(settings.queue)
    assert claimed == set(waiting) - {waiting[0]}  # the first holds its slot, leased


def test_a_job_waiting_for_a_slot_at_its_deadline_is_claimed_once_without_a_slot(deployment):
    settings, st = deployment
    settings = settings.model_copy(update={"max_in_flight": 1, "dispatch_ahead": 10})
    (running,) = _jobs(settings, st, 1, Lane.SUBMIT)
    pump = Pump(st.redis, settings)
    assert pump.claim_due()[Lane.SUBMIT].entries == 1
    (late,) = _jobs(settings, st, 1, Lane.SUBMIT, deadline_s=0.3)
    assert pump.claim_due()[Lane.SUBMIT].entries == 0  # taken into its tenant's queue
    time.sleep(0.4)
    limits = ProviderLimits(st.redis, settings)
    limits.release(running, "default")  # a slot is free as its deadline has passed
    st.redis.delete(settings.queue)
    assert pump.claim_due()[Lane.SUBMIT].entries == 1
    assert [m for msg in _messages(st, settings.queue) for m in msg[0]] == [late]
    assert st.redis.zscore(limits.in_flight, late) is None  # its step ends it: no slot


def test_a_tenant_with_a_backlog_does_not_hold_back_another_tenants_next_job(deployment):
    """Claims without workers: tenant a's 50 due jobs and tenant b's 2, one slot freed at a
    time: b's jobs take the second and fourth slots (alternating tags), not the 51st."""
    settings, st = deployment
    settings = settings.model_copy(update={"max_in_flight": 1, "dispatch_ahead": 10})
    a = [_create(settings, st, "a") for _ in range(50)]
    b = [_create(settings, st, "b") for _ in range(2)]
    pump, limits = Pump(st.redis, settings), ProviderLimits(st.redis, settings)
    order = []
    for _ in range(5):
        pump.claim_due()
        (claimed,) = [m for msg in _messages(st, settings.queue) for m in msg[0]]
        order.append(claimed)
        st.redis.delete(settings.queue)
        limits.release(claimed, "a" if claimed in a else "b")
    assert [m in b for m in order] == [False, True, False, True, False], order


def _create(settings: Settings, st: JobStore, tenant: str) -> str:
    record = new_record(parse_request({"prompt": "x"}), settings, tenant=tenant)
    st.create(record, None)
    return record.id
