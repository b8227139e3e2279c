"""Scenario 2, polling efficiency: status calls per job and how soon a finished video is seen.

Three providers, each a scenario of its own with a fixed 1 s loop (bench/baseline.py, one
thread per job) polling the same jobs on the same sandbox at the same time:

- ``polling-flaky`` (a): a provider that reports progress and fails one status query in seven
  (a 502), generations spread over 10-90 s;
- ``polling-no-progress`` (b): a provider that reports only ``processing`` then ``completed``,
  with no usable progress, generations as the sandbox's default timings make them (jitter
  included), measured after the first 20 jobs of each model and shape have finished, so the
  worker has their generation times to learn from (worker/history.py);
- ``polling`` (c): a provider that reports progress, generations from 20 s to 10 min.

The provider's clock runs ``time_scale`` times real time, and so do our poll settings and
the baseline's 1 s interval (and its retry delays), so every count and every latency relative
to the generation time is what it would be unscaled; absolute latencies are reported unscaled
(divided by ``time_scale``). Measured:

- Status calls per job: the sandbox's request counter of each side's API key, minus its
  creates, over the measured jobs: a status query the provider refused with a 502 is a call
  too. (The per-job chart uses each task's own counter, which counts answered queries only.)
- Detection latency: from the sandbox's ``ready_at`` to the moment ``finalize`` starts for
  the job (the instrumented worker's trace); for the baseline, to the moment its GET returned
  ``completed``. Each job is judged against its own allowance, max(10 % of its generation
  time, 2 s): the share of jobs within it and the p95 of latency / allowance.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    Services,
    deployment,
    log,
    percentile,
    poll_env,
    read_trace,
    wait_until,
)
from bench.model import Row, ScenarioResult
from ops.sandbox.state import key_fingerprint
from producer import enqueue_batch, get
from producer.core.names import Keys
from producer.core.records import TERMINAL
from worker.history import CACHE_S

NAME = "polling"
# The goal's allowance for noticing a finished video: 10 % of its generation time, or 2 s.
ALLOWANCE_SHARE, ALLOWANCE_FLOOR_S = 0.10, 2.0
# The goal on calls: at most this share of the 1 s loop's.
CALLS_GOAL = 0.2


def allowance_s(generation_s: float) -> float:
    """How late a finished video may be noticed under the goal (unscaled seconds)."""
    return max(ALLOWANCE_SHARE * generation_s, ALLOWANCE_FLOOR_S)


def fewest_blind_calls(generation_s: float) -> float:
    """The fewest status calls any schedule needs to notice a job within its allowance when
    nothing says when it will end (no progress, no history): its queries must be at most
    allowance_s(t) apart at every age t it might end at, so it makes at least
    integral(dt / allowance_s(t)) of them: t / 2 up to 20 s, then 10 ln(t / 20)."""
    floor_until_s = ALLOWANCE_FLOOR_S / ALLOWANCE_SHARE
    early = min(generation_s, floor_until_s) / ALLOWANCE_FLOOR_S
    return early + math.log(max(generation_s, floor_until_s) / floor_until_s) / ALLOWANCE_SHARE


def log_spaced(first_s: float, last_s: float, count: int) -> list[float]:
    """count generation times (unscaled seconds), log-spaced from first_s to last_s."""
    if count == 1:
        return [first_s]
    ratio = last_s / first_s
    return [round(first_s * ratio ** (i / (count - 1)), 1) for i in range(count)]


@dataclass(frozen=True)
class Shape:
    """One kind of job: a model and clip length; timing None uses the sandbox's defaults."""

    model: str
    duration: int = 1
    timing: dict[str, float] | None = None

    def request(self, i: int, what: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": f"{what} {i}",
            "size": "64x48",
            "duration": self.duration,
        }


@dataclass(frozen=True)
class Scale:
    """How big one polling scenario runs.

    Attributes:
        shapes: How many job shapes (generation times or models) to take.
        jobs_per_shape: Measured jobs per shape.
        time_scale: How much faster than real time the provider (and our polls) run.
        timeout_s: Longest wait (real seconds) for every measured job to end.
        warmup_per_shape: Jobs per shape run to the end before the measured ones (history).
        history_wait_s: Real seconds between the warm-up's end and the measured jobs: a
            worker re-reads a model's history at most every worker.history.CACHE_S.
    """

    shapes: int
    jobs_per_shape: int
    time_scale: float
    timeout_s: float
    warmup_per_shape: int = 0
    history_wait_s: float = 0.0


@dataclass(frozen=True)
class Case:
    """One polling scenario: a provider (sandbox knobs) and its jobs.

    The upper-case attributes are what bench/__main__.py asks of a scenario module.
    """

    NAME: str
    title: str
    FULL: Scale
    SMOKE: Scale
    shapes: Callable[[int], list[Shape]]
    knobs: dict[str, Any] = field(default_factory=dict)
    span: str = ""
    about: str = ""
    # What limits the latency goal when this case misses it (and what a trial run showed).
    limits: str = ""

    def run(self, services: Services, scale: Scale) -> ScenarioResult:
        """Run the scenario at scale and return its rows, notes and chart data."""
        return _run(self, services, scale)

    def rows(self, result: ScenarioResult) -> list[Row]:
        """The scenario's table rows, from its stored outcome."""
        return rows(result)

    def notes(self, result: ScenarioResult) -> list[str]:
        """The scenario's notes, from its stored outcome."""
        return notes(result)


def _spread(first_s: float, last_s: float) -> Callable[[int], list[Shape]]:
    def shapes(count: int) -> list[Shape]:
        return [
            Shape(f"gen-{g:g}s", 1, {"base_s": g, "per_video_second_s": 0.0})
            for g in log_spaced(first_s, last_s, count)
        ]

    return shapes


# The sandbox's default timings (base_s + per_video_second_s * duration, ±20 % jitter):
# sora 4 s ~12 s, sora 20 s ~36 s, sora-pro 8 s ~39 s, sora-pro 20 s ~75 s.
_MODELS = [Shape("sora", 4), Shape("sora", 20), Shape("sora-pro", 8), Shape("sora-pro", 20)]

FLAKY = Case(
    NAME="polling-flaky",
    title="Polling a provider that reports progress and fails 1 status query in 7",
    FULL=Scale(shapes=10, jobs_per_shape=20, time_scale=1.0, timeout_s=300),
    SMOKE=Scale(shapes=2, jobs_per_shape=2, time_scale=0.05, timeout_s=40),
    shapes=_spread(10.0, 90.0),
    knobs={"error_rate": 1 / 7, "error_routes": ["status"], "error_codes": [502]},
    span="10-90 s, 1 in 7 status queries fail",
    about="Generation times 10 ... 90 s (log-spaced, ±20 % jitter from the sandbox); the "
    "sandbox answers 502 to one status query in seven, at random (`error_rate=1/7`, "
    '`error_routes=["status"]`, `error_codes=[502]`), and reports progress on the others. '
    "A failed query keeps the job's last estimate of its end.",
    limits="**What limits the latency:** the refused queries. A job whose query at its "
    "expected end was the one in seven refused is asked again after a quarter of the time "
    "since its last answer (at least a quarter of `VIDEOQUEUE_POLL_FIRST_S`; "
    "worker/tasks.py `_observe`); two refusals in a row cost a short job its allowance.",
)
NO_PROGRESS = Case(
    NAME="polling-no-progress",
    title="Polling a provider that reports no progress, after learning the model's times",
    FULL=Scale(
        shapes=4,
        jobs_per_shape=30,
        time_scale=0.5,
        timeout_s=240,
        warmup_per_shape=20,
        history_wait_s=CACHE_S + 1,
    ),
    SMOKE=Scale(shapes=1, jobs_per_shape=2, time_scale=0.05, timeout_s=40, warmup_per_shape=5),
    shapes=lambda count: _MODELS[:count],
    # The router flavor answers "processing" then "completed" and no other word. Every
    # flavor also sends a "progress" field, and no knob leaves it out; "progress": NaN on
    # every answer is what the worker reads as no progress at all (worker/provider.py
    # reads a progress that is not a finite number as absent).
    knobs={"nan_progress_rate": 1.0},
    span="default timings, no progress, after {warmup} jobs per model",
    about="The sandbox's default timings (`sora` 4 s and 20 s clips, `sora-pro` 8 s and "
    "20 s: about 12, 36, 39 and 75 s, ±20 % jitter). The router flavor says only "
    "`processing`, then `completed`; the progress every flavor sends is NaN on every "
    "answer (`nan_progress_rate=1`), which the worker reads as no progress, as if the "
    "field were absent (the sandbox has no knob that leaves it out). First 20 jobs of each "
    "model and clip length (the shape the worker's history is kept by) run to the end; "
    "the measured jobs start once every worker process has re-read that history.",
    limits="**What limits the latency:** how closely the warm-up polls bracket each "
    "generation's end. The history keeps only ends bracketed within max(25 % of the job's "
    "age, 2 x `POLL_FIRST_S`) (`HISTORY_BRACKET_SHARE` in worker/tasks.py); a model with "
    "fewer than five such samples is polled as if cold, on the backoff (2, 4.4, 7.3, 10.5, "
    "14.5 s), which notices a ~12 s job up to 4 s late.",
)
SPREAD = Case(
    NAME=NAME,
    title="Polling efficiency over generation times from 20 s to 10 min",
    FULL=Scale(shapes=20, jobs_per_shape=3, time_scale=0.2, timeout_s=240),
    SMOKE=Scale(shapes=4, jobs_per_shape=1, time_scale=0.01, timeout_s=30),
    shapes=_spread(20.0, 600.0),
    span="20 s-10 min",
    about="Generation times 20, 23.9, 28.6 ... 600 s (log-spaced, ±20 % jitter), with "
    "progress reported.",
)
CASES = (FLAKY, NO_PROGRESS, SPREAD)


def _run(case: Case, services: Services, scale: Scale) -> ScenarioResult:
    k = scale.time_scale
    result = ScenarioResult(
        name=case.NAME,
        title=case.title,
        smoke=services.smoke,
        params={
            **asdict(scale),
            **POLL_PARAMS,
            "baseline_interval_s": 1.0,
            "flavor": "router",
            "sandbox": case.knobs,
        },
    )
    shapes = case.shapes(scale.shapes)
    timings = {s.model: s.timing for s in shapes if s.timing is not None}
    sandbox = {"time_scale": k, **case.knobs}
    if timings:
        sandbox["timings"] = timings
    warmup = [s.request(i, "warm-up") for i in range(scale.warmup_per_shape) for s in shapes]
    measured = [s.request(i, "measured") for i in range(scale.jobs_per_shape) for s in shapes]
    with deployment(services, case.NAME, sandbox=sandbox, env=poll_env(k)) as dep:
        dep.start_worker(concurrency=2)
        warm_ids: list[str] = []
        if warmup:
            log(f"{case.NAME}: {len(warmup)} warm-up jobs first, so the worker has history")
            warm_ids = _enqueue(dep, warmup)
            _wait_ended(dep, warm_ids, scale.timeout_s, "the warm-up jobs")
            time.sleep(scale.history_wait_s)
        before = dep.sandbox.stats(include_tasks=False)["keys"]
        baseline: dict[str, Any] = {}
        failure: list[BaseException] = []

        def compare() -> None:
            try:
                baseline.update(
                    run_in_subprocess(
                        {
                            "api_url": dep.api_url,
                            "api_key": BASELINE_KEY,
                            "requests": measured,
                            "interval_s": 1.0 * k,
                            "time_scale": k,
                            "window_s": None,
                            "timeout_s": scale.timeout_s,
                        },
                        dep.trace_dir,
                        "baseline",
                    )
                )
            except BaseException as e:  # re-raised in the main thread below
                failure.append(e)

        comparison = threading.Thread(target=compare, name="vqbench-baseline")
        comparison.start()
        job_ids = _enqueue(dep, measured)
        log(f"{case.NAME}: {len(job_ids)} jobs, and the 1 s loop beside them, at time scale {k:g}")
        _wait_ended(dep, job_ids, scale.timeout_s, "our jobs")
        comparison.join(timeout=scale.timeout_s + 180)
        if failure:
            raise failure[0]
        time.sleep(0.5)  # let the last finalize's trace line land
        records = {j: get(j, settings=dep.settings) for j in [*warm_ids, *job_ids]}
        stats = dep.sandbox.stats()
        trace = read_trace(dep.trace_dir)
    _summarise(case, result, scale, records, warm_ids, job_ids, before, stats, trace, baseline)
    return result


def _enqueue(dep: Deployment, requests: list[dict[str, Any]]) -> list[str]:
    """Enqueue requests as one batch; the batch's job ids, in request order."""
    batch_id = enqueue_batch(requests, settings=dep.settings)
    with dep.redis() as client:
        jobs = Keys(dep.settings.key_prefix).batch_jobs(batch_id)
        return [j.decode() for j in client.lrange(jobs, 0, -1)]


def _wait_ended(dep: Deployment, job_ids: list[str], timeout_s: float, what: str) -> None:
    def ended() -> bool:
        return all(get(j, settings=dep.settings).status in TERMINAL for j in job_ids)

    wait_until(ended, timeout_s, every_s=1.0, what=f"{what} to end")


def _summarise(
    case: Case,
    result: ScenarioResult,
    scale: Scale,
    records: dict[str, Any],
    warm_ids: list[str],
    job_ids: list[str],
    before: dict[str, Any],
    stats: dict[str, Any],
    trace: Any,
    baseline: dict[str, Any],
) -> None:
    k = scale.time_scale
    tasks = stats["tasks"]
    finalize_at: dict[str, float] = {}
    for r in trace.runs:
        if r.task == "finalize":
            finalize_at.setdefault(r.job_id, r.started_at)

    def job_figures(task_id: str | None, seen_at: float | None) -> dict[str, Any] | None:
        task = tasks.get(task_id or "")
        if task is None or task["ready_at"] is None:
            return None
        generation_s = (task["ready_at"] - task["created_at"]) / k
        latency_s = None if seen_at is None else max(0.0, seen_at - task["ready_at"]) / k
        return {
            "generation_s": generation_s,
            "calls": task["status_queries"],
            "latency_s": latency_s,
            "allowance_used": None if latency_s is None else latency_s / allowance_s(generation_s),
        }

    def figures_of(ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for job_id in ids:
            f = job_figures(records[job_id].provider_task_id, finalize_at.get(job_id))
            if f is not None:
                out.append(f)
        return out

    ours, cold = figures_of(job_ids), figures_of(warm_ids)
    per_job = baseline.get("per_job", [])
    theirs = [
        f for task_id, _created, done_at, _calls in per_job if (f := job_figures(task_id, done_at))
    ]

    def calls_of(key: str, task_ids: list[str | None]) -> int:
        """Status calls by key's side since the measured jobs started, refused ones included:
        its requests, less its creates."""
        fingerprint = key_fingerprint(key)
        sent = stats["keys"].get(fingerprint, {}).get("requests", 0)
        sent -= before.get(fingerprint, {}).get("requests", 0)
        return int(sent - sum(tasks[t]["creates"] for t in task_ids if t in tasks))

    our_calls = calls_of(API_KEY, [records[j].provider_task_id for j in job_ids])
    their_calls = calls_of(BASELINE_KEY, [row[0] for row in per_job])
    answered_ours = sum(f["calls"] for f in ours)
    abandoned = int(baseline.get("abandoned", 0))
    result.params.update(
        {
            "jobs_completed_ours": sum(1 for f in ours if f["latency_s"] is not None),
            "jobs_completed_baseline": sum(1 for f in theirs if f["latency_s"] is not None),
            "baseline_abandoned": abandoned,
            "status_calls_ours": our_calls,
            "status_calls_ours_answered": answered_ours,
            "status_calls_baseline": their_calls,
            "jobs_measured": len(job_ids),
            "jobs_baseline": len(per_job),
            "jobs_warmup": len(warm_ids),
            "over_allowance_ours": sum(1 for f in ours if (f["allowance_used"] or 0) > 1),
            "faults": stats["totals"].get("faults", {}),
        }
    )

    def points(figures: list[dict[str, Any]]) -> list[list[float | None]]:
        return [
            [
                round(f["generation_s"], 2),
                f["calls"],
                None if f["latency_s"] is None else round(f["latency_s"], 3),
            ]
            for f in figures
        ]

    result.series = {"ours": points(ours), "baseline": points(theirs), "cold": points(cold)}
    result.rows = rows(result)
    result.notes = notes(result)


def rows(result: ScenarioResult) -> list[Row]:
    """The table's rows, from the stored figures (so RESULTS.md can be rebuilt)."""
    case = next(c for c in CASES if result.name == c.NAME)
    params = result.params
    ours = _figures_of(result.series.get("ours", []))
    theirs = _figures_of(result.series.get("baseline", []))
    cold = _figures_of(result.series.get("cold", []))
    warmup = int(params.get("warmup_per_shape", 0))
    n_ours = int(params.get("jobs_measured", len(ours)))
    n_theirs = int(params.get("jobs_baseline", len(theirs)))
    per_job_ours = params.get("status_calls_ours", 0) / max(1, n_ours)
    per_job_theirs = params.get("status_calls_baseline", 0) / max(1, n_theirs)
    calls_ratio = per_job_ours / per_job_theirs if per_job_theirs else None

    def p95(figures: list[dict[str, Any]], key: str) -> float:
        return percentile([f[key] for f in figures if f[key] is not None], 95)

    def within(figures: list[dict[str, Any]], jobs: int) -> float:
        """Share of all jobs noticed within their allowance (one never noticed is not)."""
        ok = sum(1 for f in figures if f["allowance_used"] is not None and f["allowance_used"] <= 1)
        return ok / max(1, jobs)

    used_p95 = p95(ours, "allowance_used")
    spread = f"{n_ours} jobs, {case.span.format(warmup=warmup)}"
    vs = "fixed 1 s poll"
    out = [
        Row(
            case.NAME,
            f"status calls per job ({spread})",
            per_job_ours,
            "calls",
            per_job_theirs,
            vs,
            "<= 1/5 of the 1 s poll",
            calls_ratio is not None and calls_ratio <= CALLS_GOAL,
        ),
        Row(
            case.NAME,
            f"detection latency p95 / allowance max(10 % of generation, 2 s) ({spread})",
            used_p95,
            "x",
            p95(theirs, "allowance_used"),
            vs,
            "<= 1",
            used_p95 <= 1.0,
        ),
        Row(
            case.NAME,
            f"jobs noticed within their allowance ({spread})",
            100 * within(ours, n_ours),
            "%",
            100 * within(theirs, n_theirs),
            vs,
        ),
        Row(
            case.NAME,
            f"detection latency p95, unscaled ({spread})",
            p95(ours, "latency_s"),
            "s",
            p95(theirs, "latency_s"),
            vs,
        ),
    ]
    if cold:
        n_cold = int(params.get("jobs_warmup", len(cold)))
        out += [
            Row(
                case.NAME,
                f"status calls per job, first {warmup} jobs per model "
                f"(no history yet, {n_cold} jobs)",
                sum(f["calls"] for f in cold) / max(1, len(cold)),
                "calls",
            ),
            Row(
                case.NAME,
                f"detection latency p95 / allowance, first {warmup} jobs per model "
                "(no history yet)",
                p95(cold, "allowance_used"),
                "x",
            ),
        ]
    return out


def _figures_of(points: list[list[Any]]) -> list[dict[str, Any]]:
    """The stored per-job points back as figures (allowance used computed again)."""
    return [
        {
            "generation_s": g,
            "calls": calls,
            "latency_s": latency,
            "allowance_used": None if latency is None else latency / allowance_s(g),
        }
        for g, calls, latency in points
    ]


def notes(result: ScenarioResult) -> list[str]:
    """What the jobs and provider were, what went over, and what bounds a goal out of reach;
    from the stored figures, so RESULTS.md can be rebuilt without a rerun."""
    case = next(c for c in CASES if result.name == c.NAME)
    params = result.params
    k = float(params.get("time_scale", 1.0))
    ours = _figures_of(result.series.get("ours", []))
    cold = _figures_of(result.series.get("cold", []))
    our_calls = int(params.get("status_calls_ours", 0))
    answered = int(params.get("status_calls_ours_answered", 0))
    abandoned = int(params.get("baseline_abandoned", 0))
    warmup = int(params.get("warmup_per_shape", 0))
    out = [
        case.about
        + (
            f" Run {1 / k:g}x faster than real time together with our poll settings and the "
            "1 s loop's interval (and its retry delays), so call counts and latency relative "
            "to the generation time are those of real time."
            if k != 1
            else " Run in real time."
        )
        + " The router flavor is used: the openai flavor's `openai-poll-after-ms` hint is "
        "clamped to 5 s of real time, which a compressed clock would turn into a much longer "
        f"wait. Poll settings: `VIDEOQUEUE_POLL_FIRST_S={POLL_FIRST_S:g}`, "
        f"`VIDEOQUEUE_POLL_FACTOR={POLL_FACTOR:g}`, `VIDEOQUEUE_POLL_CAP_S={POLL_CAP_S:g}` "
        "(the product's defaults, scaled with the clock). Calls per job count every status "
        "query sent, answered or refused; the chart's per-job counts are answered ones.",
    ]
    if our_calls != answered or abandoned:
        out.append(
            f"Of our {our_calls:,} status calls the provider refused {our_calls - answered:,}."
            + (
                " The 1 s loop (the SDK's retry policy: two retries, then the job is given up) "
                f"abandoned {abandoned} of its jobs; they count as not noticed."
                if abandoned
                else ""
            )
        )
    late = sorted(
        (f for f in ours if f["allowance_used"] is not None and f["allowance_used"] > 1),
        key=lambda f: -f["allowance_used"],
    )
    if late:
        worst = ", ".join(
            f"a {f['generation_s']:.0f} s job seen {f['latency_s']:.1f} s late" for f in late[:5]
        )
        out.append(f"Noticed after their allowance: {len(late)} of {len(ours)} jobs ({worst}).")
    used = [f["allowance_used"] for f in ours if f["allowance_used"] is not None]
    if case.limits and used and percentile(used, 95) > 1:
        out.append(case.limits)
    if cold:
        blind = sum(fewest_blind_calls(f["generation_s"]) for f in cold) / len(cold)
        loop = sum(f["generation_s"] for f in cold) / len(cold)
        cold_calls = sum(f["calls"] for f in cold) / len(cold)
        used = [f["allowance_used"] for f in cold if f["allowance_used"] is not None]
        out.append(
            "**What bounds a provider without progress before there is history:** nothing "
            "then says when a job will end, so to notice it within its allowance whenever it "
            "ends, its queries must be at most max(10 % of its age, 2 s) apart at every age "
            "it might end at: at least t / 2 calls up to t = 20 s, then 10 ln(t / 20) more. "
            f"For these jobs that is {blind:.1f} calls per job on average against {loop:.0f} "
            f"for a 1 s loop ({blind / max(1.0, loop):.2f} of it). Both goals together are out "
            "of reach for generations under about 150 s (the fewest calls are 1/5 of the "
            "loop's at 150 s, 0.31 at 75 s, 0.44 at 36 s, 0.5 at 12 s). Our geometric backoff "
            f"(x{POLL_FACTOR:g}) makes fewer calls and is late by up to about "
            f"{POLL_FACTOR - 1:.0%} of the age: the first {warmup} jobs per model made "
            f"{cold_calls:.1f} answered calls per job, p95 of allowance used "
            f"{percentile(used, 95):.2f}. Once a model has history, a job's first poll aims at "
            "its fastest recent runs and then every 7 % of its age: the measured jobs."
        )
    short = [f for f in ours if f["generation_s"] < 60 and f["allowance_used"] is not None]
    if short and case is SPREAD:
        out.append(
            "Jobs under 60 s in this run: p95 of allowance used "
            f"{percentile([f['allowance_used'] for f in short], 95):.2f}."
        )
    return out
