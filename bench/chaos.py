"""The chaos suite: break one part while jobs run, heal it, and check that nothing was lost,
billed twice or corrupted.

    python -m bench.chaos            # every scenario (make chaos), writes bench/results/chaos/
    python -m bench.chaos --smoke    # fewer jobs, shorter faults (make chaos-smoke, CI)

Each scenario gets a rig of its own: a private redis-server with AOF (as docker-compose runs
production), a private SeaweedFS, the sandbox provider behind a TCP proxy this process
controls, the webhook receiver, and two real ``celery worker`` processes. It enqueues N jobs,
injects its fault once the jobs are spread over every step, heals it, and waits for every job
and webhook to settle. The figures are the product's own records, the sandbox's counters
(provider tasks per job), the bytes in S3 against the sandbox's bytes, and the receiver's
log of deliveries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.chaos_rig import API_KEY, BUCKET, WEBHOOK_SECRET, WORKERS, RedisKind, Rig, rig
from bench.faults import AofTail, Mode, kill_redis
from ops.sentinel import SentinelCluster
from producer import JobNotFound, JobRecord, enqueue, get
from producer.core.records import TERMINAL, JobStatus, WebhookState
from producer.core.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "chaos"
# Within this long after the heal the first job must move again (the bound).
RECOVERY_GOAL_S = 60.0
# After the heal, how long the run waits for every job and webhook to settle (at least; a
# scenario of many jobs gets SETTLE_PER_JOB_S more per job: 300 jobs ran in about a minute
# here, fault included).
SETTLE_S = 150.0
SETTLE_PER_JOB_S = 0.6
# A job that ended more than this long after the median job (enqueue to end), beyond what the
# outage explains, is late: it ended, but something held it (a lease, a lost message).
LATE_BEYOND_S = 30.0
# A job whose record is still missing this long after the heal is lost, not late.
GONE_FOR_GOOD_S = 30.0


def log(message: str) -> None:
    """Progress for the person watching the run (stderr, timestamped)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A fault: how to inject it, how to heal it, and for how long it lasts."""

    name: str
    fault: str
    inject: Callable[[Rig], None]
    heal: Callable[[Rig], None]
    fault_s: float
    # True while the fault is really in place (checked right after inject): a scenario
    # whose fault did not take is not a result.
    broken: Callable[[Rig], bool]
    appendfsync: str | None = "everysec"
    smoke: bool = True
    # Run to show what a setting costs (Redis without persistence), not held to the goals.
    comparison: bool = False
    # What the fault stops, so what moving again means: jobs ending, or webhooks landing.
    stops: str = "jobs"
    # A second provider ("b", after the proxied "a"), for faults that could move jobs there.
    second_provider: bool = False
    # Injected before the jobs are enqueued (a fault of their creates), and checked at its
    # end rather than at once: it shows only in what the jobs met.
    before_jobs: bool = False
    redis_kind: RedisKind = RedisKind.LOCAL
    # Work must move again within this long of the heal (a Sentinel failover: 30 s).
    recovery_goal_s: float = RECOVERY_GOAL_S
    # Every job must complete: the fault hides nothing that a wait does not get back (a
    # provider's file host down for a while loses no video already paid for).
    all_complete: bool = False


def _kill_redis(r: Rig) -> None:
    kill_redis(r.env["VIDEOQUEUE_BROKER_URL"])
    r.redis.stop()  # reaps the killed server's group


def _kill_worker(r: Rig) -> None:
    r.workers[0].kill()


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _provider_answer(r: Rig) -> int | str:
    """What a worker gets from the provider now: a status code or the error's name."""
    try:
        return httpx.get(
            f"{r.proxy.url}/v1/videos/video_probe", timeout=1.5,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).status_code  # fmt: skip
    except httpx.HTTPError as e:
        return type(e).__name__


def _provider_503(r: Rig) -> None:
    r.sandbox.configure(error_rate=1.0, error_codes=[503])


def _provider_ok(r: Rig) -> None:
    r.sandbox.configure(error_rate=0.0)


def _file_host_refuses(r: Rig) -> bool:
    """Whether the provider's file host refuses downloads now (the API still answering)."""
    try:
        got = httpx.get(f"{r.proxy.url}/files/probe.mp4", timeout=1.5).status_code
    except httpx.HTTPError:
        return False
    return got == 503 and _provider_answer(r) == 404


def _power_loss(r: Rig) -> None:
    """The machine under Redis lost: the process killed and the AOF's last second gone."""
    tail = AofTail(r.workdir / "redis" / "appendonlydir")
    time.sleep(1.5)  # a history of sizes to cut back to
    _kill_redis(r)
    cut = tail.cut_last(1.0)
    log(f"  cut {cut} bytes (the last second) off the AOF")


def _redis_down(r: Rig) -> bool:
    return _refuses(_port(r.env["VIDEOQUEUE_BROKER_URL"]))


def _restart_redis(r: Rig) -> None:
    r.redis.start()


def _s3_down(r: Rig) -> bool:
    return _refuses(_port(r.env["VIDEOQUEUE_S3_ENDPOINT_URL"]))


def _pass(r: Rig) -> None:
    r.proxy.set_mode(Mode.PASS)


# The first creates at a make their task and time out (the worker gives up after
# VIDEOQUEUE_API_TIMEOUT_S); every later one is refused with 429 until the heal. A job whose
# create timed out must stay at a (which holds its task); the others go to b.
TIMED_OUT_CREATES = 4


def _timeouts_then_429(r: Rig) -> None:
    r.sandbox.configure(fault_sequence={"create": ["hang"] * TIMED_OUT_CREATES + ["429"] * 100_000})


def _timed_out_and_refused(r: Rig) -> bool:
    faults = r.sandbox.stats()["totals"]["faults"]
    return faults.get("sequence_hang", 0) >= 1 and faults.get("sequence_429", 0) >= 1


SCENARIOS = [
    Scenario("redis-restart", "redis-server SIGKILLed, restarted on its AOF (everysec)",
             _kill_redis, _restart_redis, 5, _redis_down),
    Scenario("redis-power-loss", "redis-server SIGKILLed and its AOF's last second cut "
             "(a lost machine under everysec), restarted", _power_loss, _restart_redis, 5,
             _redis_down, smoke=False),
    Scenario("redis-restart-always", "redis-server SIGKILLed, restarted on its AOF (always)",
             _kill_redis, _restart_redis, 5, _redis_down, appendfsync="always", smoke=False),
    Scenario("redis-restart-no-persistence",
             "redis-server without AOF SIGKILLed and restarted (for comparison)",
             _kill_redis, _restart_redis, 5, _redis_down, appendfsync=None, smoke=False,
             comparison=True),
    Scenario("s3-outage", "SeaweedFS stopped, restarted on its ports and data",
             lambda r: r.s3.stop(), lambda r: r.s3.start(), 10, _s3_down),
    Scenario("webhook-receiver-outage", "receiver stopped, restarted on its port",
             lambda r: r.hooks.stop(), lambda r: r.hooks.start(), 10,
             lambda r: _refuses(_port(r.hook_url)), stops="webhooks"),
    Scenario("provider-503", "every provider call answered 503",
             _provider_503, _provider_ok, 10, lambda r: _provider_answer(r) == 503,
             all_complete=True),
    Scenario("provider-refused", "connections to the provider reset",
             lambda r: r.proxy.set_mode(Mode.REFUSE), _pass, 10,
             lambda r: _provider_answer(r) in ("ConnectError", "ReadError",
                                               "RemoteProtocolError"), all_complete=True),
    Scenario("file-host-outage", "the provider's file host answering 503 (its API up), "
             "for longer than the download's old retry budget",
             lambda r: r.sandbox.configure(file_outage_s=3600),
             lambda r: r.sandbox.configure(file_outage_s=0), 30, _file_host_refuses,
             smoke=False, all_complete=True),
    Scenario("provider-partition", "worker-provider traffic blackholed (silent partition)",
             lambda r: r.proxy.set_mode(Mode.BLACKHOLE), _pass, 10,
             lambda r: _provider_answer(r) == "ReadTimeout"),
    Scenario("worker-sigkill", "a worker host SIGKILLed mid-run, replaced later",
             _kill_worker, lambda r: r.start_worker(), 5,
             lambda r: r.workers[0].popen.poll() is not None),
    Scenario("provider-timeout-then-429",
             f"provider a: its first {TIMED_OUT_CREATES} creates make their task and time out, "
             "every later create is refused with 429; provider b free",
             _timeouts_then_429, lambda r: r.sandbox.configure(fault_sequence={}), 8,
             _timed_out_and_refused, second_provider=True, before_jobs=True),
]  # fmt: skip


# --- Redis failover, and faults at scale (issue 22) ----------------------------------------

# When each promoted replica answered as the primary (epoch s), in the running scenario.
_FAILOVERS: list[float] = []
# A rejoined old primary serves as a replica this long before the second failover: Sentinel
# does not fail the same master over again within 2 x failover-timeout (ops/sentinel.py).
REJOINED_FOR_S = 12.0


def _cluster(r: Rig) -> SentinelCluster:
    assert r.cluster is not None, "a failover scenario runs on RedisKind.SENTINEL"
    return r.cluster


def _kill_primary(r: Rig) -> None:
    _FAILOVERS.clear()
    log(f"  primary on port {_cluster(r).kill_primary()} SIGKILLed")


def _promoted(r: Rig) -> None:
    """Wait for the sentinels' failover of the primary killed last."""
    cluster = _cluster(r)
    new = cluster.wait_for_failover(cluster.killed[-1])
    _FAILOVERS.append(time.time())
    log(f"  replica on port {new} promoted")


def _promoted_rejoined_and_again(r: Rig) -> None:
    """The first failover; the old primary back as a replica; then the new primary killed
    too, a second failover (possibly to the old primary), and that one back as a replica."""
    cluster = _cluster(r)
    _promoted(r)
    first = cluster.killed[-1]
    cluster.rejoin(first)
    log(f"  old primary {first} back as a replica, in sync")
    time.sleep(REJOINED_FOR_S)
    log(f"  primary on port {cluster.kill_primary()} SIGKILLed (second failover)")
    _promoted(r)
    cluster.rejoin(cluster.killed[-1])


def _primary_down(r: Rig) -> bool:
    return _refuses(_cluster(r).killed[-1])


def _switch_over(r: Rig) -> None:
    """A planned failover (SENTINEL FAILOVER): the primary stays up and is demoted to a
    replica under its clients, whose writes on open connections then meet READONLY."""
    _FAILOVERS.clear()
    _SWITCHED.clear()
    cluster = _cluster(r)
    old = cluster.primary_port()
    assert old is not None, "the sentinels do not agree on a primary"
    _SWITCHED.append(old)
    sentinel = redis.Redis(port=cluster.sentinel_ports[0], socket_timeout=2)
    try:
        sentinel.execute_command("SENTINEL", "FAILOVER", cluster.master)
    finally:
        sentinel.close()
    log(f"  primary on port {old} switched over (SENTINEL FAILOVER)")


def _switched(r: Rig) -> None:
    new = _cluster(r).wait_for_failover(_SWITCHED[-1])
    _FAILOVERS.append(time.time())
    log(f"  replica on port {new} promoted")


def _demoted(r: Rig) -> bool:
    """The old primary answers, and as a replica (or is on its way to)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _cluster(r).primary_port() not in (None, _SWITCHED[-1]):
            return not _refuses(_SWITCHED[-1])
        time.sleep(0.1)
    return False


# The port of the primary a switchover demoted.
_SWITCHED: list[int] = []


def _failover_recovery(row: Row, records: dict[str, Any], failovers: list[float]) -> None:
    """recovery_s of a failover scenario: the longest wait, over its failovers, from the
    promotion to the first job ending after it (jobs end on the new primary only)."""
    ends = sorted(t for rec in records.values() if rec and (t := _epoch(rec.finished_at)))
    waits = []
    for k, promoted_at in enumerate(failovers, 1):
        after = [t for t in ends if t >= promoted_at]
        if after:
            waits.append(after[0] - promoted_at)
            row.notes.append(f"failover {k}: first job ended {waits[-1]:.1f} s after it")
        else:
            row.notes.append(f"failover {k}: no job ended after it")
    if waits and len(waits) == len(failovers):
        row.recovery_s = round(max(waits), 1)


class _KillStorm:
    """A worker SIGKILLed every few seconds (deploys, spot instances, OOM kills one after
    another) until the heal; each is replaced at once, its replacement ready some seconds
    later (Celery's start-up), so at times no worker is up at all."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.kills = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _kill_one(self, r: Rig) -> None:
        alive = [w for w in r.workers if w.popen.poll() is None]
        if alive:
            random.choice(alive).kill()
            self.kills += 1
            replacement = threading.Thread(target=r.start_worker, daemon=True)
            replacement.start()
            self._threads.append(replacement)

    def inject(self, r: Rig) -> None:
        self.kills, self._threads = 0, []
        self._stop.clear()
        self._kill_one(r)  # the first one at once: the fault is in place when checked

        def storm() -> None:
            while not self._stop.wait(self.every_s):
                self._kill_one(r)

        self._threads.append(threading.Thread(target=storm, name="kill-storm", daemon=True))
        self._threads[-1].start()

    def heal(self, r: Rig) -> None:
        self._stop.set()
        for thread in self._threads:  # replacements the storm starts meanwhile included
            thread.join()
        while sum(w.popen.poll() is None for w in r.workers) < WORKERS:
            r.start_worker()
        log(f"  {self.kills} workers SIGKILLed")

    def broken(self, r: Rig) -> bool:
        return self.kills >= 1


_storm = _KillStorm(every_s=4.0)


def _all_at_once(r: Rig) -> None:
    _provider_503(r)
    r.s3.stop()
    _kill_redis(r)


def _heal_all(r: Rig) -> None:
    _restart_redis(r)
    r.s3.start()
    _provider_ok(r)


def _all_broken(r: Rig) -> bool:
    return _redis_down(r) and _s3_down(r) and _provider_answer(r) == 503


def _partitioned(r: Rig) -> bool:
    """Redis does not answer (no refusal, no reset): a silent partition."""
    assert r.netns is not None
    host, port = r.netns.url.removeprefix("redis://").split("/")[0].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1) as sock:
            sock.sendall(b"PING\r\n")  # through the proxy, the connect itself succeeds
            sock.recv(16)
            return False
    except TimeoutError:
        return True
    except OSError:
        return False


SCENARIOS += [
    Scenario("redis-failover", "Sentinel: the primary SIGKILLed, a replica promoted",
             _kill_primary, _promoted, 1, _primary_down, appendfsync=None, smoke=False,
             redis_kind=RedisKind.SENTINEL, recovery_goal_s=30.0),
    Scenario("redis-failover-rejoin", "Sentinel: the primary SIGKILLed; it comes back as a "
             "replica; the new primary SIGKILLed too (a second failover)",
             _kill_primary, _promoted_rejoined_and_again, 1, _primary_down, appendfsync=None,
             smoke=False, redis_kind=RedisKind.SENTINEL, recovery_goal_s=30.0),
    Scenario("redis-switchover", "Sentinel: a planned failover (SENTINEL FAILOVER), the "
             "live primary demoted to a replica under its clients", _switch_over, _switched, 1,
             _demoted, appendfsync=None, smoke=False, redis_kind=RedisKind.SENTINEL,
             recovery_goal_s=30.0),
    Scenario("worker-kill-storm", "a worker SIGKILLed every 4 s (and replaced) for 2 min",
             _storm.inject, _storm.heal, 120, _storm.broken, smoke=False),
    Scenario("many-faults-at-once", "provider 503s, SeaweedFS stopped and redis-server "
             "SIGKILLed at once, healed together", _all_at_once, _heal_all, 10, _all_broken,
             smoke=False),
    Scenario("redis-partition", "the workers cut off from Redis (network namespace, every "
             "packet dropped)", lambda r: r.netns.partition(),  # type: ignore[union-attr]
             lambda r: r.netns.heal(), 15, _partitioned,  # type: ignore[union-attr]
             smoke=False, redis_kind=RedisKind.NETNS),
]  # fmt: skip


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario's figures, as RESULTS.md shows them."""

    scenario: str
    fault: str
    fault_s: float
    jobs: int
    comparison: bool = False
    all_complete: bool = False
    outage_s: float = 0.0
    fault_confirmed: bool = False
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    duplicate_creates: int = 0
    replayed_creates: int = 0
    corrupt_objects: int = 0
    webhooks_delivered: int = 0
    webhooks_dead: int = 0
    webhooks_unsettled: int = 0
    webhooks_twice: int = 0
    secrets_in_logs: int = 0
    # Workers that gave up on their own ("Unrecoverable error"): no fault may end a worker.
    workers_exited: int = 0
    # Jobs whose record is there but never ended (part of lost); jobs that ended late (see
    # LATE_BEYOND_S); every 2xx delivery the receiver got, a replayed event counted each time.
    stranded: int = 0
    late: int = 0
    webhooks_raw: int = 0
    recovery_goal_s: float = RECOVERY_GOAL_S
    recovery_s: float | None = None
    drain_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        """Every invariant held, the first job moved within RECOVERY_GOAL_S of the heal, and
        (all_complete) every job completed."""
        return (
            self.fault_confirmed
            and (not self.all_complete or self.completed == self.jobs)
            and self.lost == 0
            and self.duplicate_creates == 0
            and self.corrupt_objects == 0
            and self.webhooks_unsettled == 0
            and self.secrets_in_logs == 0
            and self.workers_exited == 0
            and self.recovery_s is not None
            and self.recovery_s < self.recovery_goal_s
        )


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def _records(ids: list[str], settings: Settings) -> dict[str, JobRecord | None]:
    out: dict[str, JobRecord | None] = {}
    for job_id in ids:
        try:
            out[job_id] = get(job_id, settings=settings)
        except JobNotFound:
            out[job_id] = None
    return out


def _settled(record: JobRecord | None) -> bool:
    if record is None or record.status not in TERMINAL:
        return False
    return record.webhook is None or record.webhook.state is not WebhookState.PENDING


def _wait_settled(ids: list[str], settings: Settings, deadline: float) -> dict[str, Any]:
    """Poll the records until every job and its webhook settled or deadline passes."""
    records: dict[str, Any] = {}
    gone_after = time.monotonic() + GONE_FOR_GOOD_S
    while True:
        try:
            records = _records(ids, settings)
        except Exception as e:  # noqa: BLE001 -- Redis may still be coming back
            log(f"  reading records: {type(e).__name__}: {str(e)[:200]}")
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        if all(_settled(r) for r in records.values()) or time.monotonic() > deadline:
            return records
        left = [r for r in records.values() if not _settled(r)]
        if all(r is None for r in left) and time.monotonic() > gone_after:
            return records  # only jobs whose records are gone are left: nothing will end them
        time.sleep(1)


def _read_object(s3: Any, key: str, patience_s: float = 60.0) -> bytes | None:
    """The object's bytes; None when it cannot be read for patience_s (counted as corrupt).

    A SeaweedFS just restarted answers InternalError until its volume server has registered
    again with its master: that is the service coming back, not the object being lost.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + patience_s
    while True:
        try:
            return bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        except (BotoCoreError, ClientError) as e:
            if time.monotonic() > deadline:
                log(f"  {key} unreadable: {e}")
                return None
            time.sleep(1)


def _measure(r: Rig, row: Row, ids: list[str], healed_at: float, records: dict, stops: str) -> None:
    """Fill row from the records, the sandbox, S3, the receiver and the worker logs."""
    present = [rec for rec in records.values() if rec is not None]
    row.completed = sum(rec.status is JobStatus.COMPLETED for rec in present)
    row.failed = sum(rec.status is JobStatus.FAILED for rec in present)
    row.cancelled = sum(rec.status is JobStatus.CANCELLED for rec in present)
    row.lost = len(ids) - row.completed - row.failed - row.cancelled
    row.stranded = sum(rec.status not in TERMINAL for rec in present)
    took = sorted(
        t1 - t0
        for rec in present
        if (t0 := _epoch(rec.created_at)) and (t1 := _epoch(rec.finished_at))
    )
    if took:
        row.late = sum(t > took[len(took) // 2] + row.outage_s + LATE_BEYOND_S for t in took)
    if missing := sum(rec is None for rec in records.values()):
        row.notes.append(f"{missing} job records gone")
    failures: dict[str, int] = {}
    for rec in present:
        if rec.status is JobStatus.FAILED and rec.error:
            failures[rec.error.code] = failures.get(rec.error.code, 0) + 1
    if failures:
        row.notes.append("failed: " + ", ".join(f"{c} x{n}" for c, n in failures.items()))
    # Jobs whose download met a file host that did not answer, and waited it out.
    if waited := sum(getattr(rec, "fetch_failures", 0) > 0 for rec in present):
        row.notes.append(f"{waited} jobs waited out a file host that did not answer")

    # Billing: every provider task must belong to a job (at that provider); a second create
    # of a job with the same Idempotency-Key is answered with the same task (a replay, not a
    # duplicate).
    for name, (sandbox, _, _) in r.providers.items():
        tasks = sandbox.stats()["tasks"]
        owned = {rec.provider_task_id for rec in present
                 if rec.provider_task_id and (rec.provider or "default") == name}  # fmt: skip
        row.duplicate_creates += len(set(tasks) - owned)
        row.replayed_creates += sum(max(0, t["creates"] - 1) for t in tasks.values())
        if len(r.providers) > 1:
            row.notes.append(f"provider {name}: {len(tasks)} tasks")

    s3 = r.s3.value.client()
    try:
        for rec in present:
            if rec.status is not JobStatus.COMPLETED or rec.output is None:
                continue
            _, url, key = r.providers[rec.provider or "default"]
            stored = _read_object(s3, rec.output.key)
            served = httpx.get(f"{url}/v1/videos/{rec.provider_task_id}/content",
                               headers={"Authorization": f"Bearer {key}"}).content  # fmt: skip
            if stored != served or hashlib.sha256(stored).hexdigest() != rec.output.sha256:
                row.corrupt_objects += 1
    finally:
        s3.close()

    landed = [d for d in r.receiver.deliveries if d.verified and 200 <= d.status < 300]
    row.webhooks_raw = len(landed)
    delivered_ids = {(d.json or {}).get("data", {}).get("id") for d in landed}
    # The same event landing twice (a transition replayed): receivers dedupe on webhook-id.
    row.webhooks_twice = len(landed) - len({d.headers.get("webhook-id") for d in landed})
    for rec in present:
        if rec.webhook is None:
            continue
        if rec.webhook.state is WebhookState.DELIVERED and rec.id in delivered_ids:
            row.webhooks_delivered += 1
        elif rec.webhook.state in (WebhookState.DEAD, WebhookState.GONE):
            row.webhooks_dead += 1
        else:
            row.webhooks_unsettled += 1
    row.webhooks_unsettled += len(ids) - len(present)

    # Recovery: from the heal to the first job ending (or webhook landing) after it.
    if stops == "webhooks":
        moves = [d.received_at for d in r.receiver.deliveries
                 if d.received_at >= healed_at and 200 <= d.status < 300]  # fmt: skip
    else:
        moves = [t for rec in present if (t := _epoch(rec.finished_at)) and t >= healed_at]
    ends = [t for rec in present if (t := _epoch(rec.finished_at))]
    if moves:
        row.recovery_s = round(min(moves) - healed_at, 1)
        row.drain_s = round(max(moves) - healed_at, 1)
    elif ends and row.lost == 0:
        row.recovery_s = 0.0  # nothing was left to move when the fault ended
        row.notes.append("no backlog at the heal")

    secrets = [WEBHOOK_SECRET, *(key for _, _, key in r.providers.values())]
    for worker in r.workers:
        text = worker.log_text()
        row.secrets_in_logs += sum(text.count(secret) for secret in secrets)
        row.workers_exited += "Unrecoverable error" in text


def _keep_logs(workdir: Path, into: Path) -> None:
    """A scenario that failed keeps its services' logs (workers, Redis, SeaweedFS) beside
    the results: the working directory goes with the run."""
    for path in workdir.rglob("*.log"):
        target = into / path.relative_to(workdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def run_scenario(scenario: Scenario, jobs: int, fault_scale: float, workdir: Path) -> Row:
    """Run one scenario end to end and return its figures."""
    fault_s = scenario.fault_s * fault_scale
    row = Row(scenario.name, scenario.fault, fault_s, jobs, scenario.comparison,
              scenario.all_complete)  # fmt: skip
    log(f"{scenario.name}: starting the rig")
    row.recovery_goal_s = scenario.recovery_goal_s
    with rig(workdir, scenario.appendfsync, scenario.second_provider, scenario.redis_kind) as r:
        request = {"model": "sora", "prompt": "a lighthouse in a storm", "size": "64x48",
                   "duration": 2, "webhook_url": r.hook_url}  # fmt: skip
        if scenario.before_jobs:
            log(f"{scenario.name}: fault for {fault_s:g} s ({scenario.fault})")
            scenario.inject(r)
            injected = time.monotonic()
        ids = [enqueue(request, settings=r.settings) for _ in range(jobs)]
        if not scenario.before_jobs:
            # Inject once the first webhook landed or a quarter of the files were fetched,
            # whichever comes first. With a few dozen jobs the first webhook means jobs at
            # every step; with hundreds, jobs move through the steps in waves (a 300-job
            # run's logs: every submit, then the copies, then the webhooks), so the first
            # webhook comes once every job completed, and a quarter of the copies is the
            # middle of the run.
            deadline = time.monotonic() + 60
            while (
                len(r.receiver.deliveries) < 1
                and r.sandbox.stats(include_tasks=False)["totals"]["downloads"] < jobs / 4
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            log(f"{scenario.name}: fault for {fault_s:g} s ({scenario.fault})")
            scenario.inject(r)
            injected = time.monotonic()
            row.fault_confirmed = scenario.broken(r)
        time.sleep(max(0.0, fault_s - (time.monotonic() - injected)))
        if scenario.before_jobs:
            row.fault_confirmed = scenario.broken(r)
        if not row.fault_confirmed:
            row.notes.append("the fault did not take")
        scenario.heal(r)
        # How long the part was really out: a restart may take longer than the fault.
        row.outage_s = round(time.monotonic() - injected, 1)
        healed_at = time.time()
        log(f"{scenario.name}: healed; waiting for every job and webhook")
        settle_s = max(SETTLE_S, SETTLE_PER_JOB_S * jobs)
        records = _wait_settled(ids, r.settings, time.monotonic() + settle_s)
        _measure(r, row, ids, healed_at, records, scenario.stops)
        if r.cluster is not None:
            _failover_recovery(row, records, _FAILOVERS)
    log(f"{scenario.name}: {'met' if row.met else 'NOT MET'} {asdict(row)}")
    return row


# --- the report ----------------------------------------------------------------------------

HEADER = (
    "| scenario | fault | out for s | jobs | completed / failed | lost | duplicate creates "
    "| corrupt objects | webhooks delivered / dead | recovery s | met? |"
)


def _verdict(row: Row) -> str:
    if row.comparison:
        return "(comparison)" if not row.met else "yes (comparison)"
    return "yes" if row.met else "**no**"


def render(rows: list[Row], *, smoke: bool, elapsed_s: float) -> str:
    """RESULTS.md: the table, then the notes of each scenario."""
    lines = [
        "# Chaos results" + (" (smoke)" if smoke else ""),
        "",
        f"`python -m bench.chaos{' --smoke' if smoke else ''}`, {len(rows)} scenarios in "
        f"{elapsed_s / 60:.1f} min on this machine. Each scenario: its own redis-server "
        f"(AOF unless named otherwise), SeaweedFS, sandbox (behind a TCP proxy), webhook "
        f"receiver and {WORKERS} `celery worker` processes (concurrency 2). Out for: from the "
        f"fault's injection until the part answered again (a restart included). Recovery: from the "
        f"heal to the first job ending or webhook landing after it (goal < "
        f"{RECOVERY_GOAL_S:.0f} s). Duplicate creates: provider tasks that no job owns; "
        f"corrupt objects: stored bytes that differ from the sandbox's.",
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
    ]
    for row in rows:
        recovery = "—" if row.recovery_s is None else f"{row.recovery_s:.1f}"
        lines.append(
            f"| {row.scenario} | {row.fault} | {row.outage_s:g} | {row.jobs} "
            f"| {row.completed} / {row.failed} | {row.lost} | {row.duplicate_creates} "
            f"| {row.corrupt_objects} | {row.webhooks_delivered} / {row.webhooks_dead} "
            f"| {recovery} | {_verdict(row)} |"
        )
    lines += ["", "## Notes", ""]
    for row in rows:
        extra = [f"idempotent create replays {row.replayed_creates}",
                 f"drain {row.drain_s} s after the heal",
                 f"secrets in worker logs {row.secrets_in_logs}",
                 f"workers that exited {row.workers_exited}",
                 f"webhooks unsettled {row.webhooks_unsettled}",
                 f"webhook events that landed twice (same webhook-id) {row.webhooks_twice}",
                 f"raw webhook deliveries {row.webhooks_raw}",
                 f"stranded {row.stranded}", f"late {row.late}",
                 *row.notes]  # fmt: skip
        lines.append(f"- **{row.scenario}**: " + "; ".join(extra) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, write RESULTS.md and results.json; exit 1 when one is not met."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="fewer jobs, shorter faults")
    parser.add_argument("--out", type=Path, help="where RESULTS.md goes")
    parser.add_argument("--only", nargs="*", help="scenario names to run")
    parser.add_argument("--jobs", type=int, help="jobs per scenario")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    # --only runs the scenarios named, at the scale asked, smoke ones or not.
    chosen = [s for s in SCENARIOS
              if (s.name in args.only if args.only else not args.smoke or s.smoke)]  # fmt: skip
    if args.only and (unknown := set(args.only) - {s.name for s in SCENARIOS}):
        parser.error(f"--only: no scenario named {', '.join(sorted(unknown))}")
    jobs = args.jobs or (12 if args.smoke else 500)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vqchaos-") as tmp:
        for scenario in chosen:
            workdir = Path(tmp) / scenario.name
            rows.append(run_scenario(scenario, jobs, 0.5 if args.smoke else 1.0, workdir))
            if not (rows[-1].met or rows[-1].comparison):
                _keep_logs(workdir, out / "logs" / scenario.name)
    text = render(rows, smoke=args.smoke, elapsed_s=time.monotonic() - started)
    (out / "RESULTS.md").write_text(text)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(text)
    return 0 if all(r.met or r.comparison for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
