"""The ceiling of one deployment: how many jobs in flight and steps per second one Redis
carries before its CPU saturates or due work is picked up late.

A private redis-server (AOF everysec, as production runs it; its own so that its CPU and
memory are this deployment's alone, not the shared test Redis's), several ``celery worker``
processes, and a fast sandbox (a generation takes 2 to 5 s). The load ramps: each step
enqueues jobs at a fixed rate for step_s seconds, one at a time as a backend would, and
measures over the step:

- Redis CPU: ``INFO cpu`` of the redis-server (used_cpu_sys + used_cpu_user), per second of
  wall time: 1.0 is one core, all a Redis's command thread has;
- steps per second: every task the instrumented workers ran (submit, poll, finalize), from
  their trace; commands per second (``INFO stats``);
- jobs in flight: every unfinished job's schedule entry (ZCARD of each lane), averaged;
- poll lateness: how late the pump claimed due entries (claim time minus due time, by
  Redis's clock), from the trace; p99 and worst;
- Redis memory per job: the growth of ``INFO memory`` used_memory from the first step's end
  to each later step's, over the jobs enqueued in between (a job's record stays after it ends,
  for the retention period, so memory follows the jobs enqueued, not only those in flight);
  the first step's end is the base because the workers' connections, kombu's keys and the
  Lua scripts cost a fixed ~0.5 MB that no job adds to.

Redis's CPU per step is the marginal cost: the idle deployment's CPU (every worker's pump
asking for due work several times a second, measured before the ramp for step_s) is taken
off before dividing by the steps per second.

The ramp stops at the first step where Redis's CPU passes SATURATED_CORES or the p99 poll
lateness passes LATENESS_LIMIT_S (or at the last rate). What saturates first on a small host
is usually the workers' CPU, not Redis's: the figures that carry to a bigger host are Redis's
CPU per step and memory per job, and the section says which limit was met.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from bench.harness import (
    Deployment,
    Services,
    deployment,
    log,
    percentile,
    read_trace,
)
from bench.model import Row, ScenarioResult
from ops.stack import redis_server
from producer import enqueue
from producer.core.names import Keys

NAME = "ceiling"
MODEL = "bench-ceiling"
# A generation of 2 to 5 s (durations 1..4): many steps per job-second, the hard case for Redis.
TIMING = {"base_s": 1.0, "per_video_second_s": 1.0}
SATURATED_CORES = 0.9
LATENESS_LIMIT_S = 1.0


@dataclass(frozen=True)
class Scale:
    """How big the scenario runs.

    Attributes:
        rates: Jobs enqueued per second, one step each, in order.
        step_s: How long each rate is held.
        workers: ``celery worker`` processes.
        concurrency: Pool processes of each.
    """

    rates: tuple[float, ...]
    step_s: float
    workers: int
    concurrency: int = 2


FULL = Scale(rates=(2, 4, 8, 16, 32, 64), step_s=30, workers=3)
SMOKE = Scale(rates=(1, 3), step_s=6, workers=2, concurrency=1)


def request(i: int) -> dict[str, Any]:
    """The i-th job: durations 1..4 s, so generations of 2 to 5 s."""
    return {"model": MODEL, "prompt": f"ceiling {i}", "size": "64x48", "duration": 1 + i % 4}


def run(services: Services, scale: Scale) -> ScenarioResult:
    """Ramp the load until Redis or the poll lateness gives; return the rows and notes."""
    result = ScenarioResult(
        name=NAME,
        title="The ceiling of one deployment: Redis CPU, memory and lateness as the load ramps",
        smoke=services.smoke,
        params={
            **asdict(scale),
            "saturated_cores": SATURATED_CORES,
            "lateness_limit_s": LATENESS_LIMIT_S,
        },  # fmt: skip
    )
    # workdir None: a temporary directory, so that its AOF is not left among the results.
    with redis_server(appendfsync="everysec") as url:
        own = replace(services, redis_url=url)
        sandbox = {"timings": {MODEL: TIMING}}
        with deployment(own, NAME, sandbox=sandbox) as dep:
            steps = _ramp(dep, scale)
    result.params["steps"] = steps
    result.rows = rows(result)
    result.notes = notes(result)
    return result


def _info(client: redis.Redis) -> dict[str, Any]:
    info = client.info("everything")
    return {
        "usec_by_command": {
            k.removeprefix("cmdstat_"): float(v["usec"])
            for k, v in info.items()
            if k.startswith("cmdstat_")
        },  # fmt: skip
        "at": time.time(),
        "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "commands": float(info["total_commands_processed"]),
        # Time inside commands (scripts included), without the reading, parsing and
        # writing around them: a lower bound of what a step costs Redis.
        "command_s": sum(float(v["usec"]) for k, v in info.items() if k.startswith("cmdstat_"))
        / 1e6,  # fmt: skip
        "used_memory": float(info["used_memory"]),
    }


def _in_flight(client: redis.Redis, keys: Keys) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys.schedules():
        pipe.zcard(key)
    return int(sum(pipe.execute()))


def _ramp(dep: Deployment, scale: Scale) -> list[dict[str, Any]]:
    client = dep.redis()
    keys = Keys(dep.settings.key_prefix)
    for n in range(scale.workers):
        dep.start_worker(concurrency=scale.concurrency, label=f"worker-{n}")
    time.sleep(2.0)  # the workers' first pump passes
    idle_start = _info(client)
    time.sleep(scale.step_s)
    idle_end = _info(client)
    idle = {
        "redis_cores": (idle_end["cpu_s"] - idle_start["cpu_s"])
        / (idle_end["at"] - idle_start["at"]),
        "commands_per_s": (idle_end["commands"] - idle_start["commands"])
        / (idle_end["at"] - idle_start["at"]),
    }
    log(f"{NAME}: idle: {idle}")
    base: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = [{"idle": True, **{k: round(v, 3) for k, v in idle.items()}}]
    enqueued = 0
    for rate in scale.rates:
        log(f"{NAME}: {rate:g} jobs/s for {scale.step_s:g} s")
        start, flights = _info(client), []
        t0 = time.monotonic()
        next_sample = t0
        while (elapsed := time.monotonic() - t0) < scale.step_s:
            while enqueued < rate * elapsed:
                enqueue(request(enqueued), settings=dep.settings)
                enqueued += 1
            if time.monotonic() >= next_sample:
                flights.append(_in_flight(client, keys))
                next_sample += 1.0
            time.sleep(0.01)
        end = {**_info(client), "enqueued": enqueued}
        base = base or end
        step = _step(dep, rate, start, end, base, idle["redis_cores"], flights,
                     _in_flight(client, keys))  # fmt: skip
        steps.append(step)
        log(f"{NAME}: {step}")
        if step["redis_cores"] >= SATURATED_CORES or step["lateness_p99_s"] > LATENESS_LIMIT_S:
            break
    client.close()
    return steps


def _step(
    dep: Deployment,
    rate: float,
    start: dict[str, Any],
    end: dict[str, Any],
    base: dict[str, Any],
    idle_cores: float,
    flights: list[int],
    in_flight_end: int,
) -> dict[str, Any]:
    wall = max(end["at"] - start["at"], 1e-9)
    trace = read_trace(dep.trace_dir)
    runs = [r for r in trace.runs if start["at"] <= r.started_at < end["at"]]
    late = [c.lateness_max_s for c in trace.claims
            if start["at"] <= c.at < end["at"] and c.entries]  # fmt: skip
    steps_per_s = len(runs) / wall
    redis_cores = (end["cpu_s"] - start["cpu_s"]) / wall
    memory = end["used_memory"] - base["used_memory"]
    jobs_since_base = end["enqueued"] - base["enqueued"]
    return {
        "rate_jobs_per_s": rate,
        "wall_s": round(wall, 1),
        "steps_per_s": round(steps_per_s, 1),
        "steps_by_task": {t: sum(r.task == t for r in runs) for t in {r.task for r in runs}},
        "commands_per_s": round((end["commands"] - start["commands"]) / wall),
        # Where Redis's time in commands went: the five costliest, ms over the step.
        "command_ms_top": dict(
            sorted(
                (
                    (k, round((v - start["usec_by_command"].get(k, 0.0)) / 1000, 1))
                    for k, v in end["usec_by_command"].items()
                ),
                key=lambda kv: -kv[1],
            )[:5]
        ),
        "command_ms_per_step": (
            round(1000 * (end["command_s"] - start["command_s"]) / len(runs), 3) if runs else None
        ),
        "redis_cores": round(redis_cores, 3),
        "redis_cpu_ms_per_step": (
            round(1000 * max(0.0, redis_cores - idle_cores) / steps_per_s, 3) if runs else None
        ),
        "in_flight_mean": round(sum(flights) / len(flights), 1) if flights else 0,
        "in_flight_end": in_flight_end,
        "enqueued_total": end["enqueued"],
        "used_memory_bytes": end["used_memory"],
        "memory_bytes_per_job": round(memory / jobs_since_base) if jobs_since_base else None,
        "lateness_p99_s": round(percentile(late, 99), 3) if late else 0.0,
        "lateness_max_s": round(max(late), 3) if late else 0.0,
    }


def _steps(result: ScenarioResult) -> list[dict[str, Any]]:
    """The ramp's steps (the idle measurement left out)."""
    return [s for s in result.params["steps"] if not s.get("idle")]


def _idle(result: ScenarioResult) -> dict[str, Any]:
    return next((s for s in result.params["steps"] if s.get("idle")), {})


def rows(result: ScenarioResult) -> list[Row]:
    """The table's lines: the last step's figures, and Redis's cost per step and per job."""
    top = _steps(result)[-1]
    load = f"{top['rate_jobs_per_s']:g} jobs/s, {top['in_flight_mean']:g} in flight"
    out = [
        Row(NAME, f"steps per second ({load})", top["steps_per_s"], "steps/s"),
        Row(NAME, f"Redis CPU ({load})", top["redis_cores"], "cores"),
        Row(
            NAME,
            f"poll lateness p99 ({load})",
            top["lateness_p99_s"],
            "s",
            goal=f"< {LATENESS_LIMIT_S:g} s",
            met=top["lateness_p99_s"] < LATENESS_LIMIT_S,
        ),  # fmt: skip
    ]
    per_step = [s["redis_cpu_ms_per_step"] for s in _steps(result)
                if s["redis_cpu_ms_per_step"]]  # fmt: skip
    if per_step:
        out.append(Row(NAME, "Redis CPU per step, idle pumps' CPU taken off (median)",
                       sorted(per_step)[len(per_step) // 2], "ms"))  # fmt: skip
    if top["memory_bytes_per_job"]:
        out.append(Row(NAME, "Redis memory per job enqueued (record kept after it ends)",
                       top["memory_bytes_per_job"] / 1024, "KiB"))  # fmt: skip
    return out


def notes(result: ScenarioResult) -> list[str]:
    """How it ran, what limited it, and what the figures extrapolate to (labelled as such)."""
    steps, idle = _steps(result), _idle(result)
    top = steps[-1]
    limit = (
        f"Redis's CPU ({top['redis_cores']:.2f} cores >= {SATURATED_CORES:g})"
        if top["redis_cores"] >= SATURATED_CORES
        else f"poll lateness (p99 {top['lateness_p99_s']:.2f} s > {LATENESS_LIMIT_S:g} s)"
        if top["lateness_p99_s"] > LATENESS_LIMIT_S
        else "neither: the ramp ended at its last rate"
    )
    lines = [
        "| jobs/s | steps/s | commands/s | in flight (mean) | Redis cores | Redis ms/step | "
        "in commands ms/step | memory/job | lateness p99 / max s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        per_job = s["memory_bytes_per_job"]
        lines.append(
            f"| {s['rate_jobs_per_s']:g} | {s['steps_per_s']:g} | {s['commands_per_s']:,} "
            f"| {s['in_flight_mean']:g} | {s['redis_cores']:.3f} "
            f"| {s['redis_cpu_ms_per_step'] or '—'} | {s['command_ms_per_step'] or '—'} "
            f"| {'—' if per_job is None else f'{per_job / 1024:.1f} KiB'} "
            f"| {s['lateness_p99_s']:.2f} / {s['lateness_max_s']:.2f} |"
        )
    per_step = top["redis_cpu_ms_per_step"]
    idle_cores = idle.get("redis_cores", 0.0)
    extrapolated = (
        f"At {per_step} ms of Redis CPU per step (over the idle deployment's "
        f"{idle_cores:.3f} cores, {idle.get('commands_per_s', 0):,.0f} commands/s from "
        f"{result.params['workers']} idle pumps), one Redis core would carry about "
        f"{(1 - idle_cores) * 1000 / per_step:,.0f} steps/s: an extrapolation from the last "
        "step, not a measurement (Redis's cost per command grows with its keys' sizes and "
        "with clients, and more workers add idle pumps). The time inside commands alone "
        f"(INFO commandstats) was {top['command_ms_per_step']} ms per step: the rest of "
        "Redis's CPU is reading, parsing and answering requests, which pipelining and "
        "batching amortise as the load grows, so the extrapolation is a floor of the "
        "ceiling, not its height."
        if per_step
        else ""
    )
    return [
        f"The ramp stopped on: {limit}. {result.params['workers']} `celery worker` processes "
        f"(prefork, {result.params['concurrency']} each), a private redis-server (AOF "
        "everysec), jobs enqueued one by one at each rate; no webhooks.",
        "\n".join(lines),
        extrapolated,
    ]
