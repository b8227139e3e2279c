"""Scenario: provider callbacks (issue 20), side by side in one run.

The same jobs (generations 10-90 s: nine clip lengths of a model the sandbox times at 10 s per
second of clip) on a provider that calls back (the sandbox speaking Replicate: Standard
Webhooks, its secret fetched from GET /v1/webhooks/default/secret), three ways:

- ``callbacks``: VIDEOQUEUE_PUBLIC_URL set, a real `videoqueue serve` taking the callbacks;
- ``polling``: no public URL: polled exactly as before;
- ``lost30``: callbacks, 30 % of them lost (the reconciler's safety net).

Each mode first runs a warm-up of WARMUP_PER_SHAPE jobs per clip length (the history the
reconciler and the poll schedule aim with), waits out the workers' history cache, then
measures. Measured per job: status calls (the sandbox's per-task counter of answered status
queries), detection latency (the sandbox's ready_at to the moment finalize starts for the
job, from the instrumented worker's trace), and whether it completed. Goals (issue 20): with
callbacks, at most 1.2 status calls per job and p95 detection under 1 s; with 30 % lost,
every job completes and p95 detection no worse than polling only.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    Services,
    deployment,
    log,
    percentile,
    poll_env,
    read_trace,
    wait_until,
)
from bench.model import Row, ScenarioResult
from ops.serve import free_port
from ops.stack import http_service
from producer import enqueue_batch, get
from producer.core.names import Keys
from producer.core.records import TERMINAL, JobStatus
from worker.history import CACHE_S

NAME = "callbacks"
MODEL = "cb-model"
SHAPES = list(range(1, 10))  # clip lengths: 10 s of generation per second of clip
WARMUP_PER_SHAPE = 5
CALLS_GOAL, P95_GOAL_S = 1.2, 1.0


@dataclass(frozen=True)
class Scale:
    """jobs: measured per mode; time_scale: the provider's (and our polls') clock speed-up;
    warmup: whether to run the warm-up."""

    jobs: int
    time_scale: float
    timeout_s: float
    warmup: bool = True


FULL = Scale(jobs=200, time_scale=1.0, timeout_s=600)
SMOKE = Scale(jobs=6, time_scale=0.05, timeout_s=90, warmup=False)
MODES = {"callbacks": 0.0, "polling": None, "lost30": 0.3}


def _requests(n: int, what: str) -> list[dict[str, Any]]:
    return [{"model": MODEL, "prompt": f"{what} {i}", "aspect_ratio": "16:9",
             "duration": SHAPES[i % len(SHAPES)]} for i in range(n)]  # fmt: skip


def _enqueue(dep: Any, requests: list[dict[str, Any]]) -> list[str]:
    batch_id = enqueue_batch(requests, settings=dep.settings)
    with dep.redis() as client:
        jobs = Keys(dep.settings.key_prefix).batch_jobs(batch_id)
        return [j.decode() for j in client.lrange(jobs, 0, -1)]


def _wait(settings: Any, ids: list[str], timeout_s: float) -> list[Any]:
    records: list[Any] = []

    def done() -> bool:
        nonlocal records
        records = [get(j, settings=settings) for j in ids]
        return all(r.status in TERMINAL for r in records)

    wait_until(done, timeout_s, every_s=1.0, what="every job to end")
    return records


def _mode(svc: Services, scale: Scale, mode: str, lost: float | None) -> dict[str, Any]:
    port = free_port()
    env = {"VIDEOQUEUE_API_DIALECT": "replicate", **poll_env(scale.time_scale)}
    if lost is not None:
        env["VIDEOQUEUE_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    sandbox = {
        "dialect": "replicate",
        "time_scale": scale.time_scale,
        "jitter": 0.1,
        "queued_fraction": 0.1,
        "timings": {MODEL: {"base_s": 0.0, "per_video_second_s": 10.0}},
        "callback_lost_rate": lost or 0.0,
    }
    with deployment(svc, f"{NAME}-{mode}", sandbox=sandbox, env=env) as dep, ExitStack() as st:
        if lost is not None:
            st.enter_context(http_service(dep.env, port=port, logfile=dep.trace_dir / "http.log"))
        dep.start_worker(concurrency=2)
        if scale.warmup:
            warm = _enqueue(dep, _requests(WARMUP_PER_SHAPE * len(SHAPES), "warm-up"))
            _wait(dep.settings, warm, scale.timeout_s)
            time.sleep(CACHE_S + 1)  # every worker re-reads the history
            dep.sandbox.reset_stats()
        started = time.time()
        ids = _enqueue(dep, _requests(scale.jobs, mode))
        records = _wait(dep.settings, ids, scale.timeout_s)
        tasks = dep.sandbox.stats()["tasks"]
        finalize = {}
        for run in read_trace(dep.trace_dir).runs:
            if run.task == "finalize" and run.started_at >= started:
                finalize.setdefault(run.job_id, run.started_at)
        calls, latencies = [], []
        for r in records:
            task = tasks.get(r.provider_task_id or "")
            if task is None:
                continue
            calls.append(task["status_queries"])
            if task["ready_at"] is not None and r.id in finalize:
                latencies.append((finalize[r.id] - task["ready_at"]) / scale.time_scale)
        completed = sum(r.status is JobStatus.COMPLETED for r in records)
        out = {
            "jobs": len(records),
            "completed": completed,
            "calls_per_job": sum(calls) / max(1, len(calls)),
            "p50_detection_s": percentile(latencies, 50),
            "p95_detection_s": percentile(latencies, 95),
            "callbacks": dep.sandbox.stats()["totals"].get("callbacks", {}),
        }
        log(f"{NAME} {mode}: {json.dumps(out)}")
        return out


def run(svc: Services, scale: Scale) -> ScenarioResult:
    """The three modes, one after another, on fresh deployments."""
    result = ScenarioResult(
        name=NAME,
        title="Provider callbacks: status calls and detection, with callbacks, polling "
        "only, and 30 % of callbacks lost",
        smoke=svc.smoke,
        params={
            "jobs": scale.jobs,
            "generation_s": "10-90",
            "time_scale": scale.time_scale,
            "warm-up per clip length": WARMUP_PER_SHAPE if scale.warmup else 0,
            "provider": "sandbox speaking replicate (Standard Webhooks)",
        },  # fmt: skip
    )
    found = {mode: _mode(svc, scale, mode, lost) for mode, lost in MODES.items()}
    result.series = found
    for mode, figures in found.items():  # each mode's figures, printed in its section
        result.params[mode] = {k: round(v, 3) if isinstance(v, float) else v
                               for k, v in figures.items()}  # fmt: skip
    cb, polling, lost = found["callbacks"], found["polling"], found["lost30"]
    result.rows = [
        Row(NAME, "status calls per job, with callbacks", cb["calls_per_job"], "calls",
            polling["calls_per_job"], "polling only", f"<= {CALLS_GOAL}",
            cb["calls_per_job"] <= CALLS_GOAL),
        Row(NAME, "p95 detection, with callbacks", cb["p95_detection_s"], "s",
            polling["p95_detection_s"], "polling only", f"< {P95_GOAL_S} s",
            cb["p95_detection_s"] < P95_GOAL_S),
        Row(NAME, "jobs completed, 30 % of callbacks lost", lost["completed"], "jobs",
            None, "", f"= {lost['jobs']}", lost["completed"] == lost["jobs"]),
        Row(NAME, "p95 detection, 30 % of callbacks lost", lost["p95_detection_s"], "s",
            polling["p95_detection_s"], "polling only", "<= polling only",
            lost["p95_detection_s"] <= polling["p95_detection_s"]),
        Row(NAME, "status calls per job, 30 % of callbacks lost", lost["calls_per_job"],
            "calls", polling["calls_per_job"], "polling only"),
    ]  # fmt: skip
    result.notes = [
        "Detection latency is the sandbox's `ready_at` to the start of `finalize` for the job "
        "(unscaled). Status calls are the sandbox's answered status queries per task. With "
        "callbacks, a job's poll is made due by its callback and its first reconciler poll "
        "aims just past the time 19 in 20 jobs of its clip length took; when more than 15 % "
        "of a provider's last 50 finished jobs (shared in Redis) ended with no callback, its "
        "jobs are polled as before, until that falls under 5 % (worker/history.py "
        "CallbackLoss).",
    ]
    return result
