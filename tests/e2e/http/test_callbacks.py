"""Provider callbacks end to end, for each dialect that calls back: real workers, a real
`videoqueue serve` (its /callbacks/ ingress), Redis, SeaweedFS and the sandbox calling back
as that provider does. Callbacks delivered (duplicated, late, out of order), lost, forged,
for another job, replayed, oversized: every job ends exactly once with one create, and what
is refused changes nothing."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ops.sandbox.state import Phase
from ops.serve import free_port
from ops.stack import http_service
from producer import JobStatus, enqueue, get
from producer.core.store import store
from tests.e2e.conftest import Pipeline, eventually

RATIO = {"size": None, "aspect_ratio": "16:9"}
# The dialects whose provider calls back, and what their requests need.
DIALECTS: dict[str, dict[str, Any]] = {
    "replicate": {"request": RATIO},
    "fal": {"request": {**RATIO, "model": "fal-ai/sora"}},
    "openrouter": {"request": {}},
    "kling": {"request": RATIO, "api_key": "ak-test:sk-test-kling-secret"},
    "luma": {"request": RATIO},
    "minimax": {"request": {"size": None}},
    "seedance": {"request": RATIO},
}
SIGNED = {"replicate", "fal", "openrouter"}
SANDBOX_SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC0xMjM0NQ=="


@dataclass
class Stack:
    pipeline: Pipeline
    url: str  # the HTTP service's
    dialect: str
    logfile: Any

    def job(self) -> str:
        fields = {k: v for k, v in self.pipeline.request(**DIALECTS[self.dialect]["request"])
                  .items() if v is not None}  # fmt: skip
        return enqueue(fields, settings=self.pipeline.settings)

    def _counts(self, name: str, label: str) -> dict[str, float]:
        """A counter of the HTTP service's /callbacks/metrics, by one of its labels."""
        counts: dict[str, float] = {}
        for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} ([0-9.e+]+)$",
                                        httpx.get(f"{self.url}/callbacks/metrics").text,
                                        flags=re.MULTILINE):  # fmt: skip
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            counts[found[label]] = counts.get(found[label], 0.0) + float(value)
        return counts

    def refused(self) -> dict[str, float]:
        """videoqueue_callbacks_refused_total by reason."""
        return self._counts("videoqueue_callbacks_refused_total", "reason")

    def accepted(self, action: str) -> float:
        return self._counts("videoqueue_callbacks_accepted_total", "action").get(action, 0.0)


@pytest.fixture
def callback_stack(make_pipeline, tmp_path) -> Iterator[Callable[..., Stack]]:
    """`callback_stack(dialect, env={...}, **sandbox knobs)`: a pipeline whose creates carry
    callback URLs of a served HTTP service (VIDEOQUEUE_PUBLIC_URL), the sandbox calling back."""
    with ExitStack() as stack:

        def make(dialect: str, env: dict[str, str] | None = None, **knobs: Any) -> Stack:
            port = free_port()
            public = f"http://127.0.0.1:{port}"
            case = DIALECTS[dialect]
            env = {
                "VIDEOQUEUE_API_DIALECT": dialect,
                "VIDEOQUEUE_PUBLIC_URL": public,
                # Replicate's is fetched from the sandbox's secret route (not set here).
                "VIDEOQUEUE_OPENROUTER_WEBHOOK_SECRET": SANDBOX_SECRET,
                **(env or {}),
            }
            sandbox = {"dialect": dialect, "flavor": "router", "fast": False, "jitter": 0,
                       **knobs}  # fmt: skip
            if case.get("api_key"):
                sandbox["api_key"] = env["VIDEOQUEUE_API_KEY"] = case["api_key"]
            p = make_pipeline(sandbox=sandbox, env=env)
            jwks = json.dumps({"fal": f"{p.settings.api_base_url}/_sandbox/jwks.json"})
            logfile = tmp_path / f"http-{port}.log"
            serve_env = {**p.env, "VIDEOQUEUE_CALLBACK_KEYS_URLS": jwks}
            url = stack.enter_context(http_service(serve_env, port=port, logfile=logfile))
            return Stack(p, url, dialect, logfile)

        yield make


def _ended(st: Stack, job_ids: list[str], timeout_s: float) -> list[Any]:
    return eventually(
        lambda: (
            (rs := [get(j, settings=st.pipeline.settings) for j in job_ids])
            and all(r.terminal for r in rs)
            and rs
        ),
        timeout_s=timeout_s,
    )


def _exactly_once(st: Stack, job_ids: list[str]) -> None:
    """Every job completed, its end announced once (one webhook event), its task made by
    one create."""
    p = st.pipeline
    for job_id in job_ids:
        record = get(job_id, settings=p.settings)
        assert record.status is JobStatus.COMPLETED, (record.status, record.error)
        p.receiver.wait_for(lambda d, j=job_id: (d.json or {}).get("data", {}).get("id") == j)
    time.sleep(0.5)  # room for a second, wrong, webhook to arrive
    events = [d.json["data"]["id"] for d in p.receiver.deliveries if d.json]
    assert sorted(events) == sorted(job_ids)
    tasks = p.sandbox.stats()["tasks"]
    assert len(tasks) == len(job_ids) and all(t["creates"] == 1 for t in tasks.values())


@pytest.mark.parametrize("dialect", DIALECTS)
def test_callbacks_bring_each_job_in_long_before_its_first_poll(callback_stack, dialect):
    """The reconciler's first poll is 30 s away (no history yet): jobs whose ~1.5 s
    generations end are finalized within seconds only because their callback made the poll
    due. Every delivery is sent twice (the repeat refused as a replay), a little late, and
    followed by a stale "running" one (acknowledged, changing nothing)."""
    st = callback_stack(
        dialect,
        env={"VIDEOQUEUE_POLL_CAP_S": "30"},
        time_scale=0.15,
        callback_duplicate_rate=1.0,
        callback_late_s=0.2,
        callback_out_of_order=True,
    )
    started = time.monotonic()
    jobs = [st.job() for _ in range(2)]
    _ended(st, jobs, timeout_s=20)
    assert time.monotonic() - started < 15
    _exactly_once(st, jobs)
    stats = st.pipeline.sandbox.stats()
    assert stats["totals"]["callbacks"]["duplicated"] >= 2
    assert st.refused().get("replay", 0) >= 2
    assert st.accepted("hastened") >= 2
    # A status query per job that the callback made due (plus a few of the reconciler's).
    assert all(t["status_queries"] <= 3 for t in stats["tasks"].values())
    if dialect == "minimax":
        assert stats["totals"]["callbacks"]["challenges_echoed"] == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_lost_callbacks_cost_latency_never_the_job(callback_stack, dialect):
    st = callback_stack(dialect, env={"VIDEOQUEUE_POLL_CAP_S": "2"}, time_scale=0.1,
                        callback_lost_rate=1.0)  # fmt: skip
    jobs = [st.job() for _ in range(2)]
    _ended(st, jobs, timeout_s=30)
    _exactly_once(st, jobs)
    assert st.pipeline.sandbox.stats()["totals"]["callbacks"]["lost"] >= 2
    assert st.accepted("hastened") == 0


def _running(st: Stack, jobs: list[str]) -> list[Any]:
    def submitted() -> Any:
        records = [get(j, settings=st.pipeline.settings) for j in jobs]
        return all(r.provider_task_id for r in records) and records

    return eventually(submitted, timeout_s=20)


def _state(st: Stack, job_id: str) -> tuple[Any, ...]:
    """What a refused callback must not change: the record and the job's schedule entry."""
    s = store(st.pipeline.settings)
    record = s.get(job_id)
    return (record.status, record.polls, record.provider_status, s.schedule.entry(job_id),
            s.redis.get(s.keys.hastened(job_id)))  # fmt: skip


@pytest.mark.parametrize("dialect", DIALECTS)
def test_forged_misdirected_oversized_and_replayed_callbacks_are_refused_and_change_nothing(
    callback_stack, dialect
):
    st = callback_stack(dialect, env={"VIDEOQUEUE_POLL_CAP_S": "60"}, time_scale=5.0,
                        callbacks=True)  # fmt: skip
    a, b = st.job(), st.job()
    ra, rb = _running(st, [a, b])
    sb = st.pipeline.sandbox
    task_a = sb.state.tasks[ra.provider_task_id.rsplit("/", 1)[-1]]
    task_b = sb.state.tasks[rb.provider_task_id.rsplit("/", 1)[-1]]
    url_a, url_b = sb.callbacks.urls[task_a.id], sb.callbacks.urls[task_b.id]
    time.sleep(1.5)  # the first polls have run: nothing else moves the entries for a while
    before = (_state(st, a), _state(st, b))

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        return httpx.post(url, content=body, headers=headers, timeout=10).status_code

    forged_body, forged_headers = sb.callbacks.delivery(task_a, Phase.COMPLETED, forged=True)
    if dialect in SIGNED:
        assert post(url_a, forged_body, forged_headers) == 401
    body_a, headers_a = sb.callbacks.delivery(task_a, Phase.COMPLETED)
    assert post(url_b, body_a, headers_a) == 409  # A's news at B's URL: another job
    assert post(url_a + "x", body_a, headers_a) == 404  # no such token
    assert post(url_a.rsplit("/", 1)[0] + "/" + "A" * 32, body_a, headers_a) == 404
    oversized = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert post(url_a, oversized, headers_a) == 413
    if dialect in SIGNED:
        stale = {k: v for k, v in headers_a.items()}
        for name in ("webhook-timestamp", "x-fal-webhook-timestamp"):
            if name in stale:
                stale[name] = str(int(stale[name]) - 3600)
        if "x-openrouter-signature" in stale:
            stale["x-openrouter-signature"] = re.sub(r"t=(\d+)", lambda m: f"t={int(m[1]) - 3600}",
                                                     stale["x-openrouter-signature"])  # fmt: skip
        assert post(url_a, body_a, stale) == 401
    assert (_state(st, a), _state(st, b)) == before
    refused = st.refused()
    assert refused.get("wrong_job") == 1 and refused.get("too_large") == 1
    assert refused.get("unknown_token") == 2
    if dialect in SIGNED:
        assert refused.get("bad_signature") == 1 and refused.get("stale_timestamp") == 1

    # The genuine one is taken (A's next poll due now), and its replay refused.
    assert post(url_a, body_a, headers_a) == 200
    mark = store(st.pipeline.settings).redis.get(store(st.pipeline.settings).keys.hastened(a))
    assert mark is not None
    assert post(url_a, body_a, headers_a) == 409
    assert st.refused().get("replay") == 1
    assert (
        store(st.pipeline.settings).redis.get(store(st.pipeline.settings).keys.hastened(a)) == mark
    )
    assert _state(st, b) == before[1]
    # The poll it made due asked the provider at once, which says "still running".
    eventually(lambda: get(a, settings=st.pipeline.settings).polls > before[0][1], timeout_s=10)
    assert get(a, settings=st.pipeline.settings).status in (JobStatus.SUBMITTED,
                                                            JobStatus.PROCESSING)  # fmt: skip


def test_a_callback_token_never_reaches_the_logs(callback_stack):
    st = callback_stack("luma", env={"VIDEOQUEUE_POLL_CAP_S": "30"}, time_scale=0.1)
    job = st.job()
    _ended(st, [job], timeout_s=20)
    url = next(iter(st.pipeline.sandbox.callbacks.urls.values()))
    token = url.rsplit("/", 1)[-1]
    httpx.post(url + "-unknown", content=b"{}")
    for worker in st.pipeline.workers:
        assert token not in worker.log_path.read_text()
    assert token not in st.logfile.read_text()
    assert token not in json.dumps(get(job, settings=st.pipeline.settings).public())
