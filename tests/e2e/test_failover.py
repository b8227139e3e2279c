"""Redis Sentinel: the primary SIGKILLed under running jobs, and every process of videoqueue
(workers, producer, CLI) carrying on with the promoted replica, without a restart.

Three redis-servers and three sentinels on loopback (ops/sentinel.py), real `celery worker`
processes, SeaweedFS and the sandbox. The broker URL is in sentinel form and the Redis
servers ask for a password, which must appear in no log and no output.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

import ops.sentinel
from ops.sentinel import SentinelCluster, sentinel_cluster
from ops.stack import redis_server
from producer import JobStatus, enqueue, get
from producer.core.errors import NotEnoughReplicas
from producer.core.names import Lane
from producer.core.records import WebhookState
from producer.core.redis_client import PRIMARY_CHECK_S
from producer.core.store import store
from tests.e2e.conftest import BUCKET, Pipeline, eventually
from tests.e2e.test_cli import run
from worker.pump import Pump

pytestmark = pytest.mark.e2e

REDIS_PASSWORD = "sentinel-test-5ecret-pw"
# Work must move again within this long of the kill (the bound).
RESUME_GOAL_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A primary, two replicas and three sentinels, stopped whatever happens."""
    with sentinel_cluster(tmp_path / "sentinel", password=REDIS_PASSWORD) as c:
        yield c


def _env(cluster: SentinelCluster, **more: str) -> dict[str, str]:
    return {
        "VIDEOQUEUE_BROKER_URL": cluster.url,
        "VIDEOQUEUE_SENTINEL_MASTER": cluster.master,
        # Short leases: a step whose Redis died under it comes back within seconds.
        "VIDEOQUEUE_LEASE_S": "4",
        **more,
    }


def _completed(p: Pipeline, ids: list[str]) -> int:
    """How many of the jobs read as completed (-1 while Redis does not answer)."""
    try:
        return sum(get(j, settings=p.settings).status is JobStatus.COMPLETED for j in ids)
    except redis.RedisError:
        return -1


def _assert_completed_billed_once_with_the_providers_bytes(
    p: Pipeline, ids: list[str], s3_client: Any
) -> None:
    """Every job ends completed within a minute; one provider task per job, none without
    its job (a create replayed under its Idempotency-Key finds the same task: counted in
    that task's `creates`, billed once); every stored object is the sandbox's bytes."""
    deadline = time.monotonic() + 60
    records = []
    for job_id in ids:
        records.append(eventually(
            lambda j=job_id: (r := get(j, settings=p.settings)).terminal and r,
            max(1.0, deadline - time.monotonic()), every_s=0.2,
        ))  # fmt: skip
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    stats = p.sandbox.stats()
    assert stats["totals"]["tasks"] == len(ids)
    assert {r.provider_task_id for r in records} == set(stats["tasks"])
    for r in records:
        data = s3_client.get_object(Bucket=BUCKET, Key=r.output.key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == r.output.sha256
        assert data == p.served_bytes(r.provider_task_id or "")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_killed_primary_fails_over_and_every_job_completes_billed_once(
    cluster: SentinelCluster, make_pipeline, s3_client
) -> None:
    """Jobs under way (some created at the provider, some still to create, none finished)
    when the primary is SIGKILLed, with the pin waiting for a replica: the workers
    reconnect to the promoted replica without a restart, work moves again within 30 s,
    every job completes with the sandbox's bytes, one provider task each."""
    p = make_pipeline(
        sandbox={"time_scale": 60.0, "file_stream_s": 1.0},
        env=_env(cluster, VIDEOQUEUE_REDIS_WAIT_REPLICAS="1"),
        workers=2,
    )
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(8)]
    # Mid-run: some created, some still to create, none finished yet by the look of it.
    eventually(lambda: p.sandbox.stats(include_tasks=False)["totals"]["creates"] >= 3, 30,
               every_s=0.05)  # fmt: skip
    completed_before = _completed(p, ids)
    assert 0 <= completed_before < len(ids)  # mid-run: work was left when the primary died
    old = cluster.kill_primary()
    killed_at = time.monotonic()
    new = cluster.wait_for_failover(old)
    assert new != old
    # The producer's pool pointed at the dead primary: its next enqueue finds the new one.
    ids += [enqueue(p.request(), settings=p.settings) for _ in range(4)]
    eventually(lambda: _completed(p, ids) > completed_before, RESUME_GOAL_S, every_s=0.2)
    resumed_s = time.monotonic() - killed_at
    assert resumed_s < RESUME_GOAL_S

    _assert_completed_billed_once_with_the_providers_bytes(p, ids, s3_client)
    for w in p.workers:  # reconnected, not restarted
        assert w.pid in w.alive_pids(), w.log_text()[-3000:]
        log = w.log_text()
        assert "Unrecoverable error" not in log
        assert REDIS_PASSWORD not in log


def _notified(p: Pipeline) -> set[str]:
    """The jobs whose webhook the receiver got."""
    return {(d.json or {}).get("data", {}).get("id") for d in p.receiver.deliveries}


def _first_end_after(p: Pipeline, ids: list[str], since: float, timeout_s: float) -> float:
    """Seconds from since (epoch) to the first job ending after it, waiting up to timeout_s."""

    def ended_after() -> float | None:
        try:
            ends = [datetime.fromisoformat(r.finished_at).timestamp() for j in ids
                    if (r := get(j, settings=p.settings)).finished_at]  # fmt: skip
        except redis.RedisError:
            return None
        later = [t for t in ends if t >= since]
        return min(later) - since if later else None

    return float(eventually(lambda: (w := ended_after()) is not None and (w,), timeout_s,
                            every_s=0.2)[0])  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(170 + 660)  # its own 170 s, after the chaos smoke run holding the host
def test_failover_under_load_then_the_old_primary_rejoins_and_a_second_failover(
    alone_among_the_heavy: None, cluster: SentinelCluster, make_pipeline, s3_client
) -> None:
    """24 jobs with webhooks, at every step, when the primary is SIGKILLed; it comes back
    as a replica of the promoted one; then 24 more, and the new primary SIGKILLed too. Work moves
    again within 30 s of each promotion, every job completes with one provider task and the
    provider's bytes, and a receiver deduping by webhook-id sees each job's event once."""
    p = make_pipeline(
        # A 2 s clip takes ~2.8 s: jobs are spread over submit, poll, finalize and notify.
        sandbox={"time_scale": 25.0},
        env=_env(cluster, VIDEOQUEUE_REDIS_WAIT_REPLICAS="1"),
        workers=2,
    )
    ids: list[str] = []
    for failover in (1, 2):
        # Mid-run: the first half's first jobs notified, the rest at every step before, and
        # the second half just enqueued (all 24 at once could all end before the first
        # webhook is seen on a fast host).
        wave = [enqueue(p.request(), settings=p.settings) for _ in range(12)]
        eventually(lambda w=wave: _notified(p) & set(w), 60, every_s=0.05)
        wave += [enqueue(p.request(), settings=p.settings) for _ in range(12)]
        ids += wave
        assert 0 <= _completed(p, wave) < len(wave)
        old = cluster.kill_primary()
        new = cluster.wait_for_failover(old)
        promoted_at = time.time()
        waited_s = _first_end_after(p, ids, promoted_at, RESUME_GOAL_S)
        assert waited_s < RESUME_GOAL_S, (failover, waited_s)
        # The old primary back, as a replica of the new one (in sync before it serves).
        cluster.rejoin(old)
        # Sentinel fails the same master over again only after 2 x failover-timeout.
        time.sleep(max(0.0, promoted_at + 11 - time.time()) if failover == 1 else 0)
    assert new in cluster.servers and not cluster.killed

    _assert_completed_billed_once_with_the_providers_bytes(p, ids, s3_client)
    eventually(lambda: all(get(j, settings=p.settings).webhook.state is WebhookState.DELIVERED
                           for j in ids), 30, every_s=0.2)  # fmt: skip
    landed = [d for d in p.receiver.deliveries if d.verified and 200 <= d.status < 300]
    by_webhook_id: dict[str, set[bytes]] = {}
    for d in landed:
        by_webhook_id.setdefault(d.headers["webhook-id"], set()).add(d.body)
    # Deduped by webhook-id: one event per job, every job's; a replayed delivery (a
    # "delivered" mark lost with the old primary) is the same event, byte for byte.
    assert len(by_webhook_id) == len(ids), (len(by_webhook_id), len(landed))
    assert {json.loads(next(iter(b)))["data"]["id"] for b in by_webhook_id.values()} == set(ids)
    assert all(len(bodies) == 1 for bodies in by_webhook_id.values())
    for w in p.workers:  # reconnected twice, not restarted
        assert w.pid in w.alive_pids(), w.log_text()[-3000:]
        assert "Unrecoverable error" not in w.log_text()


def test_with_wait_replicas_each_job_waits_for_a_replica_at_its_pin_and_at_its_end(
    cluster: SentinelCluster, make_pipeline
) -> None:
    """VIDEOQUEUE_REDIS_WAIT_REPLICAS=1: the pin before each create and the end that settles
    each job's charge are each followed by a WAIT on the primary (its own command counts)."""
    p = make_pipeline(env=_env(cluster, VIDEOQUEUE_REDIS_WAIT_REPLICAS="1"))
    primary = cluster.server(cluster.primary_port() or 0)
    waits_before = _wait_calls(primary)
    ids = [enqueue(p.request(webhook_url=None), settings=p.settings) for _ in range(3)]
    eventually(lambda: _completed(p, ids) == len(ids), 60, every_s=0.2)
    assert _wait_calls(primary) - waits_before >= 2 * len(ids)


def _wait_calls(server: redis.Redis) -> int:
    return int(server.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


@pytest.fixture
def refusing_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """The same deployment, whose servers refuse writes as a primary without a replica in
    sync (min-replicas-to-write 1), stopped whatever happens."""
    with sentinel_cluster(
        tmp_path / "sentinel", password=REDIS_PASSWORD, min_replicas_to_write=1
    ) as c:
        yield c


# What worker/transport.py logs when the broker refuses a worker's BRPOP.
BROKER_REFUSED = "broker refused a pop (NOREPLICAS)"


def _a_step_was_refused(p: Pipeline) -> bool:
    """A worker's step met NOREPLICAS and came back through its fault boundary."""
    return any("unexpected exception" in line and NotEnoughReplicas.__name__ in line
               for w in p.workers for line in w.log_text().splitlines())  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_primary_without_replicas_refuses_enqueue_and_in_flight_jobs_complete_billed_once(
    refusing_cluster: SentinelCluster, make_pipeline, s3_client
) -> None:
    """min-replicas-to-write 1 and every replica stopped while a finalize streams the
    provider's file: enqueue raises NotEnoughReplicas (NOREPLICAS named, no password) and
    queues nothing, the HTTP service answers 503 and the CLI one line; the finalize's
    write is refused into its fault boundary, every worker's broker pop is refused, and the
    workers live on; once a replica is back every job completes, one provider task each,
    with the provider's bytes."""
    from starlette.testclient import TestClient

    from producer.core.keys import create_key
    from producer.http.app import create_app

    cluster = refusing_cluster
    p = make_pipeline(
        # A download drips for 5 s: the replicas are gone before the first one ends.
        sandbox={"time_scale": 60.0, "file_stream_s": 5.0},
        env=_env(cluster),
        workers=2,
    )
    _, secret = create_key("acme", settings=p.settings)
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(6)]
    eventually(lambda: p.sandbox.stats(include_tasks=False)["totals"]["downloads"] >= 1, 30,
               every_s=0.05)  # fmt: skip
    assert _completed(p, ids) == 0  # mid-run: a finalize streaming, none finished
    stopped = cluster.stop_replicas()  # returns once the primary counts none in sync
    assert len(stopped) == 2

    with pytest.raises(NotEnoughReplicas) as refused:
        enqueue(p.request(), settings=p.settings)
    assert "NOREPLICAS" in str(refused.value) and "replica" in str(refused.value)
    assert REDIS_PASSWORD not in str(refused.value)
    with TestClient(create_app(p.settings)) as http:
        made = http.post("/v1/videos", json={"model": "sora", "prompt": "a fox"},
                         headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert made.status_code == 503, made.text
    assert made.json()["error"]["code"] == "redis_unavailable"
    cli = run(p.env, "submit", "--prompt", "a fox", "--size", "64x48", "--duration", "1")
    assert cli.returncode == 1, cli.stderr
    assert "NOREPLICAS" in cli.stderr and "Traceback" not in cli.stderr
    assert REDIS_PASSWORD not in cli.stderr + cli.stdout
    # The streaming finalize ends in a refused write: it comes back through its boundary.
    # And every worker's broker pop (a write) is refused: a worker used to exit on that.
    eventually(lambda: _a_step_was_refused(p), 30, every_s=0.2)
    eventually(lambda: all(BROKER_REFUSED in w.log_text() for w in p.workers), 30, every_s=0.2)
    p.sandbox.configure(file_stream_s=0)  # the drip has done its part: downloads at full speed

    for port in stopped:
        cluster.rejoin(port)  # in sync when it returns: writes are taken again
    ids.append(enqueue(p.request(), settings=p.settings))
    # Nothing of the refused enqueue or request was queued: one provider task per job here.
    _assert_completed_billed_once_with_the_providers_bytes(p, ids, s3_client)
    for w in p.workers:  # lived through the refusals, not restarted
        assert w.pid in w.alive_pids(), w.log_text()[-3000:]
        log = w.log_text()
        assert "Unrecoverable error" not in log
        assert REDIS_PASSWORD not in log


def test_the_cli_and_the_doctor_work_through_sentinel_and_print_no_password(
    cluster: SentinelCluster, make_pipeline
) -> None:
    p = make_pipeline(env=_env(cluster))
    done = run(p.env, "submit", "--prompt", "a fox", "--size", "64x48", "--duration", "1",
               "--wait", "--json", "--timeout", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    doctor = run(p.env, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    broker = next(c for name, c in checks.items() if "broker" in name.lower())
    assert broker["ok"], broker
    assert "sentinel://127.0.0.1:" in broker["detail"]
    for out in (done.stdout, done.stderr, doctor.stdout, doctor.stderr):
        assert REDIS_PASSWORD not in out


def test_a_master_the_sentinels_do_not_know_is_named_unreachable_without_its_password(
    cluster: SentinelCluster, make_pipeline
) -> None:
    """A wrong VIDEOQUEUE_SENTINEL_MASTER: one line says which Redis is unreachable, by its
    sentinels' addresses, with no password and no traceback."""
    p = make_pipeline(workers=0, env=_env(cluster, VIDEOQUEUE_SENTINEL_MASTER="no-such-master"))
    status = run(p.env, "status", "some-job")
    assert status.returncode == 1, status.stderr
    assert "Traceback" not in status.stderr
    text = " ".join(status.stderr.split())  # as printed, wrapped to the console's width
    assert "unreachable" in text and "sentinel://127.0.0.1:" in text
    assert "(master no-such-master)" in text
    assert REDIS_PASSWORD not in status.stderr + status.stdout


def test_lua_scripts_and_replica_waits_work_on_the_promoted_primary(
    cluster: SentinelCluster, make_pipeline
) -> None:
    """A promoted replica may not hold the scripts the old primary had loaded (NOSCRIPT):
    they are loaded again, inside pipelines too; WAIT counts the replicas left."""
    p = make_pipeline(workers=0, env=_env(cluster))
    st = store(p.settings)
    enqueue(p.request(), settings=p.settings)
    assert st.wait_for_replicas(2, 2000) == 2
    old = cluster.kill_primary()
    new = cluster.wait_for_failover(old)
    cluster.server(new).script_flush()
    second = enqueue(p.request(), settings=p.settings)  # create.lua, called directly
    assert get(second, settings=p.settings).status is JobStatus.QUEUED
    # claim.lua, queued on a pipeline (the pump's way): both jobs are due and claimed.
    claimed = Pump(st.redis, p.settings).claim_due()
    assert claimed[Lane.SUBMIT].entries == 2
    # One replica is left: WAIT counts it.
    assert eventually(lambda: st.wait_for_replicas(1, 1000) >= 1, 20)


def test_after_a_planned_switchover_writes_reach_the_new_primary_not_the_demoted_one(
    cluster: SentinelCluster, make_pipeline
) -> None:
    """SENTINEL FAILOVER demotes a primary that stays up: it takes writes until the
    sentinels turn it into a replica, and its resync then discards them. A pooled
    connection must leave it within about PRIMARY_CHECK_S of the promotion, so writes
    made after that survive the resync."""
    p = make_pipeline(workers=0, env=_env(cluster))
    st = store(p.settings)
    st.redis.set(f"{p.settings.key_prefix}:probe:before", 1)  # a pooled connection, to it
    old = cluster.primary_port()
    assert old is not None
    sentinel = redis.Redis(port=cluster.sentinel_ports[0], socket_timeout=2)
    sentinel.execute_command("SENTINEL", "FAILOVER", cluster.master)
    sentinel.close()
    new = cluster.wait_for_failover(old)
    time.sleep(PRIMARY_CHECK_S + 0.5)
    keys = [f"{p.settings.key_prefix}:probe:{n}" for n in range(20)]
    for key in keys:  # while the old primary may still answer as one
        st.redis.set(key, 1)
        time.sleep(0.1)
    # The old primary demoted and in sync with the new one: what it alone held is gone.
    eventually(lambda: _in_sync_with(cluster, old, new), 30, every_s=0.2)
    on_new = cluster.server(new)
    try:
        assert [k for k in keys if not on_new.exists(k)] == []
    finally:
        on_new.delete(*keys)
        on_new.close()


def _in_sync_with(cluster: SentinelCluster, port: int, primary: int) -> bool:
    client = cluster.server(port)
    try:
        role = client.execute_command("ROLE")
        return bool(role[0] == b"slave" and int(role[2]) == primary and role[3] == b"connected")
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_the_http_service_answers_through_sentinel(cluster: SentinelCluster, make_pipeline) -> None:
    """`videoqueue serve` with the sentinel URL: ready, and a key of ours creates a job."""
    from starlette.testclient import TestClient

    from producer.core.keys import create_key
    from producer.http.app import create_app

    p = make_pipeline(workers=0, env=_env(cluster))
    _, secret = create_key("acme", settings=p.settings)
    with TestClient(create_app(p.settings)) as http:
        assert http.get("/readyz").status_code == 200
        made = http.post("/v1/videos", json={"model": "sora", "prompt": "a fox"},
                         headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
        assert made.status_code == 200, made.text
        assert get(made.json()["id"], settings=p.settings).tenant == "acme"


def test_a_cluster_whose_picked_ports_were_taken_forms_on_fresh_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ports picked free and taken before the servers bind them (another xdist worker's
    servers): the cluster is started again on fresh ports, and no ready check is answered by
    the process that took a port."""
    with redis_server(workdir=tmp_path / "other") as other_url:
        taken = int(other_url.rsplit(":", 1)[1].split("/")[0])
        real = ops.sentinel.free_ports
        picks = iter([[taken, *real(5)], [*real(5), taken]])  # the primary's, then a sentinel's
        monkeypatch.setattr("ops.sentinel.free_ports", lambda n: next(picks, None) or real(n))
        with sentinel_cluster(tmp_path / "sentinel", password=REDIS_PASSWORD) as c:
            assert taken not in [*c.servers, *c.sentinel_ports]
            port = c.primary_port()
            assert port is not None and c.answers_as_primary(port)
