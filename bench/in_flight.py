"""Scenario 1, in flight: how many generations one worker host can watch at once.

N jobs whose generations take 15 to 30 minutes are enqueued at once (one ``enqueue_batch``),
submitted to the sandbox and watched by one ``celery worker`` (prefork, one child per core of
this 2-core host) for a window after the last submission. Jobs are not waited for: the point
is the watching. Measured, for each load N:

- the worker's RSS, main process plus pool children summed (psutil, every second), and PSS;
- Redis memory: MEMORY USAGE of every key in the benchmark's database (the deployment's
  records, schedule, leases, queues and kombu's bookkeeping), at the end of the window;
- poll lateness, how late due polls were picked up: every pass of the worker's pump
  (worker/pump.py) reports, per lane, the entries it claimed, their summed lateness and the
  worst (claim time minus due time, by Redis's clock); the instrumented worker writes them to
  its trace. Percentiles count each entry at its claim's worst lateness (an upper bound; the
  median uses the claim's mean). Beside it, how long a claimed poll message then waited in
  Celery's queue before a pool process started it, so "due -> poll task started" is known too;
- duplicate submissions: the sandbox's counters (a task created more than once, or more
  tasks than jobs), and recoveries (claims whose lease ran out) from the job records;
- status calls per second (the sandbox's counter) and CPU of the worker, the sandbox (this
  process) and Redis, to show what limits the rate.

The comparison, at the goal's load (10,000), is bench/baseline.py: N threads, each creating
its generation and polling it every second, run for a window on the same sandbox after our
worker stopped.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.baseline import run_in_subprocess
from bench.harness import (
    API_KEY,
    BASELINE_KEY,
    POLL_CAP_S,
    POLL_FACTOR,
    POLL_FIRST_S,
    POLL_PARAMS,
    Deployment,
    ProcessTree,
    Sampler,
    Services,
    Trace,
    deployment,
    host_probes,
    log,
    read_trace,
    redis_keys_memory_bytes,
    spent,
    wait_until,
    weighted_percentile,
)
from bench.model import Row, ScenarioResult
from ops.sandbox.state import key_fingerprint
from producer import enqueue_batch
from producer.core.names import Keys
from producer.core.settings import Settings

NAME = "in-flight"
MODEL = "bench-inflight"
# base_s + per_video_second_s * duration, for duration 1..20: 15 minutes to 30 minutes, so
# that no job ends before the last of 10,000 reaches the provider (about 9 minutes at the 20
# submits/s a polling worker manages here; with the 2-10 min of earlier runs, jobs ended as
# fast as new ones arrived and at most ~6,100 were ever at the provider at once).
SHORTEST_S, LONGEST_S = 900.0, 1800.0
TIMING = {
    "base_s": SHORTEST_S - (LONGEST_S - SHORTEST_S) / 19,
    "per_video_second_s": (LONGEST_S - SHORTEST_S) / 19,
}
MB = 1e6
LATENESS_GOAL_S = 1.0
# The workers run with the product's default (the benchmark sets no such variable).
DISPATCH_AHEAD = Settings.model_fields["dispatch_ahead"].default
# The tail of the window whose lateness shows the steady state, after the burst's backlog.
STEADY_TAIL_S = 30.0
RSS_GOAL_BYTES = 300 * MB
# The load the goals are set for (and the thread-per-job comparison runs at).
GOAL_LOAD = 10_000


@dataclass(frozen=True)
class Scale:
    """How big the scenario runs.

    Attributes:
        loads: The N to run, one deployment each; the comparison runs at GOAL_LOAD (or the
            smallest load, at smoke scale).
        time_scale: Sandbox generation times are multiplied by this.
        submit_timeout_s: Longest wait for the worker to submit every job of a load.
        window_s: How long the worker watches after the last submission.
        baseline_window_s: How long the thread-per-job loop polls after its last thread
            started.
        report_window_s: A load above GOAL_LOAD is not waited for: it is watched this long
            after its enqueue, however many of its jobs have reached the provider by then.
        concurrency: Pool processes of the worker (one per core).
    """

    loads: tuple[int, ...]
    time_scale: float
    submit_timeout_s: float
    window_s: float
    baseline_window_s: float
    report_window_s: float = 0.0
    concurrency: int = 2


FULL = Scale(
    loads=(10_000, 100_000),
    time_scale=1.0,
    submit_timeout_s=600,
    window_s=45,
    baseline_window_s=30,
    report_window_s=120,
)
SMOKE = Scale(loads=(40,), time_scale=0.05, submit_timeout_s=30, window_s=3, baseline_window_s=3)


def request(i: int) -> dict[str, Any]:
    """The i-th job: durations 1..20 s, so generations of 15 to 30 minutes."""
    return {"model": MODEL, "prompt": f"in flight {i}", "size": "64x48", "duration": 1 + i % 20}


def run(services: Services, scale: Scale) -> ScenarioResult:
    """Run the scenario at scale and return its rows, notes and chart data."""
    result = ScenarioResult(
        name=NAME,
        title="In flight: jobs watched by one worker host",
        smoke=services.smoke,
        params={**asdict(scale), **POLL_PARAMS, "pool": "prefork"},
    )
    compared = GOAL_LOAD if GOAL_LOAD in scale.loads else min(scale.loads)
    loads: list[dict[str, Any]] = []
    baseline: dict[str, Any] = {}
    for n in scale.loads:
        sandbox = {"timings": {MODEL: TIMING}, "time_scale": scale.time_scale}
        with deployment(services, f"{NAME}-{n}", sandbox=sandbox) as dep:
            loads.append(_watch(dep, scale, n))
            if n == compared:
                log(f"{NAME}: thread-per-job comparison with {n:,} threads")
                baseline = _comparison(
                    {
                        "api_url": dep.api_url,
                        "api_key": BASELINE_KEY,
                        "requests": [request(i) for i in range(n)],
                        "interval_s": 1.0,
                        "window_s": scale.baseline_window_s,
                    },
                    dep.trace_dir,
                )
    _summarise(result, loads, baseline, compared)
    return result


def _comparison(spec: dict[str, Any], workdir: Any) -> dict[str, Any]:
    """The thread-per-job loop's report; {"failed": why} if it could not finish, so that our
    own figures of the load are kept."""
    try:
        return run_in_subprocess(spec, workdir, "baseline")
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
        log(f"{NAME}: the thread-per-job comparison did not finish: {type(e).__name__}")
        return {"failed": f"{type(e).__name__}: {str(e)[:300]}"}


def _watch(dep: Deployment, scale: Scale, n: int) -> dict[str, Any]:
    """Enqueue n jobs, let one worker submit and watch them, and measure; then stop it."""
    worker = dep.start_worker(concurrency=scale.concurrency)
    tree = ProcessTree(worker.pid)
    client = dep.redis()
    ours = key_fingerprint(API_KEY)
    time.sleep(2.0)  # the pool settles: what an idle worker holds
    idle_rss = tree.rss_bytes()

    def in_flight() -> float:
        keys = dep.sandbox.stats(include_tasks=False)["keys"]
        return float(keys.get(ours, {}).get("active", 0))

    def status_calls() -> float:
        return float(dep.sandbox.stats(include_tasks=False)["totals"]["status_queries"])

    probes = {
        "rss": tree.rss_bytes,
        "rss_main": tree.root_rss_bytes,
        "pss": tree.pss_bytes,
        "cpu": tree.cpu_s,
        "cpu_main": tree.root_cpu_s,
        "threads": tree.threads,
        "in_flight": in_flight,
        "status_calls": status_calls,
        **host_probes(client),
    }
    with Sampler(probes, interval_s=1.0) as sampler:
        t0 = time.time()
        batch_id = enqueue_batch((request(i) for i in range(n)), settings=dep.settings)
        log(f"{NAME}: enqueued {n:,} jobs in {time.time() - t0:.1f} s")
        if n > GOAL_LOAD:  # reported, not waited for
            time.sleep(scale.report_window_s)
            submitted_s = time.time() - t0
            window_start = t0
        else:
            wait_until(
                lambda: dep.sandbox.stats(include_tasks=False)["totals"]["tasks"] >= n,
                scale.submit_timeout_s,
                every_s=1.0,
                what=f"all {n:,} jobs to be submitted",
            )
            submitted_s = time.time() - t0
            log(f"{NAME}: submitted after {submitted_s:.1f} s; watching {scale.window_s:.0f} s")
            window_start = time.time()
            time.sleep(scale.window_s)
        t_end = time.time()
        redis_keys = redis_keys_memory_bytes(client)
        stats = dep.sandbox.stats()
    worker.stop()
    records = _record_totals(client, dep, batch_id)
    client.close()
    trace = read_trace(dep.trace_dir)
    figures = _figures(n, stats, trace, sampler, t0, t_end, submitted_s, redis_keys, records)
    window = max(t_end - window_start, 1e-9)
    figures["rss_idle_bytes"] = idle_rss
    figures["status_calls_per_s_window"] = (
        spent(sampler.series["status_calls"], window_start, t_end) / window
    )
    figures["waited_for_all"] = n <= GOAL_LOAD
    return figures


def _record_totals(client: Any, dep: Deployment, batch_id: str) -> dict[str, int]:
    """Polls and recoveries summed over the load's job records (read as stored JSON)."""
    keys = Keys(dep.settings.key_prefix)
    job_ids = [j.decode() for j in client.lrange(keys.batch_jobs(batch_id), 0, -1)]
    totals = {"records": 0, "polls": 0, "recoveries": 0}
    for start in range(0, len(job_ids), 5_000):
        chunk = job_ids[start : start + 5_000]
        for raw in client.mget([keys.job(j) for j in chunk]):
            if raw is None:
                continue
            record = json.loads(raw)
            totals["records"] += 1
            totals["polls"] += int(record.get("polls") or 0)
            totals["recoveries"] += int(record.get("recoveries") or 0)
    return totals


def _figures(
    n: int,
    stats: dict[str, Any],
    trace: Trace,
    sampler: Sampler,
    t0: float,
    t_end: float,
    submitted_s: float,
    redis_keys: float,
    records: dict[str, int],
) -> dict[str, Any]:
    """One load's figures and chart series."""
    ours = stats["keys"].get(key_fingerprint(API_KEY), {})
    tasks = [t for t in stats["tasks"].values() if t["creates"]]
    duplicates = sum(t["creates"] - 1 for t in tasks) + max(0, ours.get("tasks", 0) - n)
    claims = [c for c in trace.claims if c.lane == "poll"]
    submit_claims = [c for c in trace.claims if c.lane == "submit"]
    watched_s = t_end - t0
    submitted_at = t0 + submitted_s

    def p99(selected: list[Any]) -> float:
        return weighted_percentile([(c.lateness_max_s, c.entries) for c in selected], 99)

    claim_of = trace.claim_of()
    polls = [r for r in trace.runs if r.task == "poll"]
    waits = [(r, r.started_at - claim_of[r.task_id].at) for r in polls if r.task_id in claim_of]
    due_to_start = [
        (claim_of[r.task_id].lateness_max_s + max(0.0, wait), len(r.members)) for r, wait in waits
    ]
    entries = sum(c.entries for c in claims)
    step = max(1, len(claims) // 15_000)
    cores = {
        name: round(spent(sampler.series[probe], t0, t_end) / watched_s, 2)
        for name, probe in (
            ("worker", "cpu"),
            ("worker_main", "cpu_main"),
            ("sandbox", "sandbox_cpu"),
            ("redis", "redis_cpu"),
            ("seaweedfs", "s3_cpu"),
        )
    }
    status_calls = stats["totals"]["status_queries"]
    return {
        "jobs": n,
        "submitted": ours.get("tasks", 0),
        "submitted_after_s": round(submitted_s, 1),
        "submits_per_s": round(ours.get("tasks", 0) / max(submitted_s, 1e-9), 1),
        "watched_s": round(watched_s, 1),
        "rss_peak_bytes": sampler.peak("rss"),
        "rss_main_peak_bytes": sampler.peak("rss_main"),
        "in_flight_peak": sampler.peak("in_flight"),
        "pss_peak_bytes": sampler.peak("pss"),
        "threads_peak": sampler.peak("threads"),
        "redis_keys_bytes": redis_keys,
        "lateness_p50_s": weighted_percentile([(c.lateness_mean_s, c.entries) for c in claims], 50),
        "lateness_p99_s": p99(claims),
        "lateness_p99_while_submitting_s": p99([c for c in claims if c.at < submitted_at]),
        "lateness_p99_after_submitting_s": p99([c for c in claims if c.at >= submitted_at]),
        "lateness_p99_last_30s_s": p99([c for c in claims if c.at >= t_end - STEADY_TAIL_S]),
        "lateness_max_s": max((c.lateness_max_s for c in claims), default=float("nan")),
        "queue_wait_p99_s": weighted_percentile([(w, len(r.members)) for r, w in waits], 99),
        "due_to_start_p99_s": weighted_percentile(due_to_start, 99),
        "submit_lateness_max_s": max((c.lateness_max_s for c in submit_claims), default=0.0),
        "polls": entries,
        "poll_tasks": len(polls),
        "jobs_per_poll_task": round(entries / max(1, len(polls)), 1),
        "redelivered": sum(r.redelivered for r in trace.runs),
        "recoveries": records["recoveries"],
        "duplicates": duplicates,
        "status_calls_per_s": status_calls / watched_s,
        "tasks_per_s": len(trace.runs) / watched_s,
        "worker_cpu_ms_per_status_call": round(
            1000 * cores["worker"] * watched_s / max(1, status_calls + ours.get("tasks", 0)), 2
        ),
        "cores": cores,
        "lateness": [[round(c.at - t0, 2), round(c.lateness_max_s, 4)] for c in claims[::step]],
        "in_flight": sampler.relative("in_flight", t0),
        "rss_ours": sampler.relative("rss", t0),
    }


def _summarise(
    result: ScenarioResult, loads: list[dict[str, Any]], baseline: dict[str, Any], compared: int
) -> None:
    if "failed" in baseline:
        result.params["baseline_failed"] = baseline["failed"]
        baseline = {}
    base_series = baseline.get("series", [])
    base_window = float(baseline.get("window_s") or 1.0)
    base_cpu_s = base_series[-1][3] - base_series[0][3] if base_series else 0.0
    result.params["loads"] = [
        {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in f.items()
            if k not in ("lateness", "in_flight", "rss_ours")
        }
        for f in loads
    ]
    if baseline:
        result.params["baseline"] = {
            k: baseline[k]
            for k in (
                "jobs",
                "threads_started",
                "thread_start_failures",
                "created",
                "abandoned",
                "errors",
                "calls",
                "window_s",
                "lateness_s",
                "request_s",
                "peak_rss_bytes",
            )
        }
        result.params["baseline"]["cores"] = round(base_cpu_s / base_window, 2)
    result.params["compared"] = compared
    result.series = {
        "loads": [{k: f[k] for k in ("jobs", "lateness", "in_flight", "rss_ours")} for f in loads],
        "rss_baseline": [[row[0], row[2]] for row in base_series],
        "baseline_jobs": baseline.get("jobs", 0),
    }
    result.rows = rows(result)
    result.notes = notes(result)


def rows(result: ScenarioResult) -> list[Row]:
    """The table's rows, from the stored figures (so RESULTS.md can be rebuilt)."""
    loads: list[dict[str, Any]] = result.params.get("loads", [])
    baseline: dict[str, Any] = result.params.get("baseline", {})
    compared = int(result.params.get("compared", GOAL_LOAD))
    base_window = float(baseline.get("window_s") or 1.0)
    base_late = baseline.get("lateness_s", {})
    out: list[Row] = []
    versus = "thread per job"
    for f in loads:
        n = f["jobs"]
        compare = n == compared and bool(baseline)
        # A load not waited for is named by what was enqueued; the note says how many of
        # its jobs reached the provider.
        held = f.get("in_flight_peak", n) >= n and f.get("waited_for_all", True)
        load = f"{n:,} in flight" if held else f"{n:,} enqueued"
        goal = n == compared  # the goals are set at 10,000; other loads are reported

        def theirs(value: float | None, compare: bool = compare) -> float | None:
            return value if compare else None

        label = versus if compare else ""
        out += [
            Row(
                NAME,
                f"worker RSS, main process + pool ({load})",
                f["rss_peak_bytes"] / MB,
                "MB",
                theirs(baseline.get("peak_rss_bytes", 0) / MB),
                label,
                "< 300 MB" if goal else "",
                f["rss_peak_bytes"] < RSS_GOAL_BYTES if goal else None,
            ),
            Row(
                NAME,
                f"worker PSS, shared pages counted once ({load})",
                f["pss_peak_bytes"] / MB,
                "MB",
            ),
            Row(
                NAME,
                f"Redis memory, every key of the deployment ({load})",
                f["redis_keys_bytes"] / MB,
                "MB",
            ),
            Row(
                NAME,
                f"poll lateness p50 ({load})",
                f["lateness_p50_s"],
                "s",
                theirs(base_late.get("50")),
                f"{label}: wake-up lateness" if compare else "",
            ),
            Row(
                NAME,
                f"poll lateness p99 ({load})",
                f["lateness_p99_s"],
                "s",
                theirs(base_late.get("99")),
                f"{label}: wake-up lateness" if compare else "",
                "< 1 s" if goal else "",
                f["lateness_p99_s"] < LATENESS_GOAL_S if goal else None,
            ),
            Row(
                NAME,
                f"poll lateness p99, last {STEADY_TAIL_S:g} s of the window ({load})",
                f["lateness_p99_last_30s_s"],
                "s",
            ),
            Row(
                NAME,
                f"poll due -> poll task started p99, queue wait included ({load})",
                f["due_to_start_p99_s"],
                "s",
                None,
                "",
                "< 1 s (lateness as measured before)" if goal else "",
                f["due_to_start_p99_s"] < LATENESS_GOAL_S if goal else None,
            ),
            Row(
                NAME,
                f"duplicate submissions ({load})",
                float(f["duplicates"]),
                "count",
                None,
                "",
                "0",
                f["duplicates"] == 0,
            ),
            Row(
                NAME,
                f"status calls per second ({load})",
                f["status_calls_per_s"],
                "calls/s",
                theirs(baseline.get("calls", 0) / base_window),
                f"{label}, whose schedule asks for {n:,}/s" if compare else "",
            ),
            Row(
                NAME,
                f"CPU cores used by the worker ({load})",
                f["cores"]["worker"],
                "cores",
                theirs(baseline.get("cores")),
                label,
            ),
        ]
        if compare:
            out.append(
                Row(
                    NAME,
                    f"threads ({load})",
                    f["threads_peak"],
                    "count",
                    float(baseline.get("threads_started", 0)),
                    versus,
                )
            )
    return out


def _seconds(value: float) -> str:
    """A lateness for a note: "0.12 s", or "none" when no poll fell in the period (NaN)."""
    return "none" if math.isnan(value) else f"{value:.2f} s"


def notes(result: ScenarioResult) -> list[str]:
    """How it was measured, each load's breakdown, what limits a missed goal, and the
    comparison's; from the stored figures, so RESULTS.md can be rebuilt without a rerun."""
    loads: list[dict[str, Any]] = result.params.get("loads", [])
    baseline: dict[str, Any] = result.params.get("baseline", {})
    compared = int(result.params.get("compared", GOAL_LOAD))
    out = [
        "Each load is enqueued at once (one `enqueue_batch`), submitted by one `celery worker` "
        "(prefork, 2 pool processes: the host's 2 cores) and watched; generations take "
        f"{SHORTEST_S / 60:g}-{LONGEST_S / 60:g} min, so none finishes while it is watched "
        "(with the 2-10 min of the before figures, jobs here ended as fast as new ones "
        "reached the provider, and 10,000 were never there at once). The goal's load is "
        "watched for "
        f"{result.params.get('window_s', 0):g} s once every job is at the provider; a larger "
        f"load is watched {result.params.get('report_window_s', 0):g} s from its enqueue, "
        "however many have reached the provider by then. RSS is summed over the worker's main "
        "process and pool children (shared pages count in each, so it overstates what the "
        "host pays; PSS counts them once). Poll lateness is how late the pump claimed due "
        "polls, by Redis's clock, each entry counted at its claim's worst lateness, over "
        "every claim of the run; a claimed message then waits in Celery's poll queue (at most "
        f"`VIDEOQUEUE_DISPATCH_AHEAD`, {DISPATCH_AHEAD}, messages) for a pool process: "
        '"due -> poll task '
        'started" adds that wait (the start of the batch; its status queries go out '
        "together right after).",
    ]
    for f in loads:
        cores = f["cores"]
        reached = (
            f"all {f['jobs']:,} at the provider after {f['submitted_after_s']:.0f} s"
            if f.get("waited_for_all") and f["submitted"] >= f["jobs"]
            else f"{f['submitted']:,} of {f['jobs']:,} at the provider after "
            f"{f['submitted_after_s']:.0f} s"
        )
        out.append(
            f"**{f['jobs']:,} enqueued:** {reached} ({f['submits_per_s']:,.0f} submits/s "
            f"while polling the jobs already there; at most "
            f"{f.get('in_flight_peak', float('nan')):,.0f} at the provider at once). Poll "
            "lateness p99 "
            f"{_seconds(f['lateness_p99_while_submitting_s'])} while submitting, "
            f"{_seconds(f['lateness_p99_after_submitting_s'])} after, "
            f"{_seconds(f['lateness_p99_last_30s_s'])} in the last {STEADY_TAIL_S:g} s; due -> "
            f"poll task started p99 {_seconds(f['due_to_start_p99_s'])} (queue wait p99 "
            f"{_seconds(f['queue_wait_p99_s'])}). {f['polls']:,} polls in "
            f"{f['poll_tasks']:,} poll tasks ({f['jobs_per_poll_task']:g} jobs each), "
            f"{f['status_calls_per_s']:,.0f} status calls/s over the run, "
            f"{f.get('status_calls_per_s_window', float('nan')):,.0f}/s in the window. The "
            f"worker used {cores['worker']:.2f} cores ({cores.get('worker_main', 0):.2f} of "
            f"them its main process: consumer and pump), "
            f"{f['worker_cpu_ms_per_status_call']:.2f} ms of CPU per provider call; the "
            f"sandbox provider, served by the benchmark's process on the same cores, "
            f"{cores['sandbox']:.2f}; Redis {cores['redis']:.2f}. RSS "
            f"{f.get('rss_idle_bytes', float('nan')) / MB:,.0f} MB idle, "
            f"{f['rss_peak_bytes'] / MB:,.0f} MB at peak "
            f"({f['rss_main_peak_bytes'] / MB:,.0f} MB of it the main process"
            + _rss_trend(result, f["jobs"])
            + "). Redis: "
            f"{f['redis_keys_bytes'] / MB:,.1f} MB for every key. Redelivered messages: "
            f"{f['redelivered']}; recoveries (leases that ran out): {f['recoveries']}."
        )
    goal = next((f for f in loads if f["jobs"] == compared), None)
    if goal is not None:
        out += _limits(goal)
    if failed := result.params.get("baseline_failed"):
        out.append(f"**The thread-per-job comparison** did not finish: `{failed}`.")
    if baseline:
        window = float(baseline.get("window_s") or 1.0)
        request = baseline.get("request_s", {})
        errors = baseline.get("errors") or {}
        calls_per_s = baseline.get("calls", 0) / window
        out.append(
            f"**The thread-per-job comparison** at {compared:,} jobs: "
            f"{baseline.get('threads_started', 0):,} threads started "
            f"({baseline.get('thread_start_failures', 0)} refused), peak RSS "
            f"{baseline.get('peak_rss_bytes', 0) / MB:,.0f} MB, {calls_per_s:,.0f} status "
            f"calls/s achieved of the {compared:,}/s its 1 s schedule asks for. Its threads "
            "wake on time (the sleep is cheap), but each GET then waits for one of the SDK's "
            f"1,000 pooled connections and for the provider: request time p50 "
            f"{request.get('50') or 0:.1f} s, p99 {request.get('99') or 0:.1f} s, so each job "
            f"is really polled every ~{compared / max(calls_per_s, 1):.0f} s while the "
            f"provider is flooded with {calls_per_s:,.0f} calls/s."
            + (f" Errors: {errors}." if errors else "")
            + f" CPU: {baseline.get('cores', 0):.2f} cores."
        )
    return out


def _rss_trend(result: ScenarioResult, jobs: int) -> str:
    """ ", still rising 1.2 MB a minute at the end" from the load's RSS series, or ""."""
    load = next((x for x in result.series.get("loads", []) if x.get("jobs") == jobs), None)
    points = (load or {}).get("rss_ours", [])
    if len(points) < 10:
        return ""
    end_t, end_v = points[-1]
    start = next((p for p in points if p[0] >= end_t - 120), points[0])
    if end_t - start[0] < 30:
        return ""
    per_min = (end_v - start[1]) / MB / ((end_t - start[0]) / 60)
    return f"; over its last {end_t - start[0]:.0f} s it grew {per_min:.1f} MB a minute"


def _limits(f: dict[str, Any]) -> list[str]:
    """What limits the goal load, when a goal is missed there."""
    out = []
    cores = f["cores"]
    needed = f["jobs"] / POLL_CAP_S
    late = f["due_to_start_p99_s"] >= LATENESS_GOAL_S
    if f["lateness_p99_s"] >= LATENESS_GOAL_S or late:
        out.append(
            f"**What limits the lateness at {f['jobs']:,} in flight:** "
            + (
                "the pump's claims are quick"
                if f["lateness_p99_s"] < LATENESS_GOAL_S
                else "the claims themselves"
            )
            + f" (p99 {_seconds(f['lateness_p99_s'])}), but a claimed poll then waits in "
            "Celery's poll queue behind up to "
            f"`VIDEOQUEUE_DISPATCH_AHEAD` ({DISPATCH_AHEAD}) messages of "
            f"about {f['jobs_per_poll_task']:g} jobs each (queue wait p99 "
            f"{_seconds(f['queue_wait_p99_s'])}), so its status queries go out "
            f"{_seconds(f['due_to_start_p99_s'])} (p99) after they were due. The worker is not "
            f"saturated: {cores['worker']:.2f} cores, {f['tasks_per_s']:,.0f} tasks/s, "
            f"{f['status_calls_per_s_window']:,.0f} status calls/s once every job was at the "
            f"provider ({needed:,.0f}/s is the least that `VIDEOQUEUE_POLL_CAP_S`={POLL_CAP_S:g} "
            f"s asks for {f['jobs']:,} jobs; more while progress still reads 0: first poll "
            f"{POLL_FIRST_S:g} s, x{POLL_FACTOR:g}), {f['worker_cpu_ms_per_status_call']:.1f} ms "
            "of worker CPU per provider call. Claims are latest while the submit burst runs "
            f"(p99 {_seconds(f['lateness_p99_while_submitting_s'])}; "
            f"{_seconds(f['lateness_p99_after_submitting_s'])} once every job was at the "
            "provider): the pump claims submits and polls in turn, and the pool runs a submit "
            "and a poll message in turn (kombu rotates between the queues); the burst here "
            f"reached the provider at {f['submits_per_s']:,.0f} jobs/s. The claim lateness "
            "also counts the host's other load (see `host_load`): the pump is a thread in a "
            "busy 2-core host's main process."
        )
    if f["rss_peak_bytes"] >= RSS_GOAL_BYTES:
        pool = f["rss_peak_bytes"] - f["rss_main_peak_bytes"]
        out.append(
            f"**What limits the RSS:** what each process maps before any job: an idle worker "
            f"(main process and 2 pool children) already holds "
            f"{f.get('rss_idle_bytes', float('nan')) / MB:,.0f} MB, each process importing "
            "Celery, pydantic, httpx, boto3 and PyAV (in each process's RSS, shared or not); "
            f"at peak the pool children held {pool / MB:,.0f} MB together and the main "
            f"process {f['rss_main_peak_bytes'] / MB:,.0f} MB. PSS, which counts shared pages "
            f"once, peaked at {f['pss_peak_bytes'] / MB:,.0f} MB. Memory per job is not the "
            f"limit: the jobs wait in Redis ({f['redis_keys_bytes'] / MB:,.1f} MB for every "
            "key), not in the worker."
        )
    return out
