"""``python -m bench``: run the benchmark scenarios and write RESULTS.md with its charts.

    python -m bench                      # every scenario, full scale -> bench/results/
    python -m bench --only copy          # one scenario (the others keep their last figures:
                                         # raw/*.json, kept in git, or RESULTS.md's own lines)
    python -m bench --smoke --out DIR    # every scenario at tiny scale, a few seconds each
    python -m bench --report-only        # rebuild RESULTS.md from the stored outcomes

Each scenario's outcome is stored in ``OUT/raw/<scenario>.json``; RESULTS.md is rebuilt
from every stored outcome of the same scale, so ``--only`` updates its own lines only.
A scenario that fails is reported as not finished, the others still run, and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    callbacks,
    ceiling,
    console,
    copy_to_s3,
    end_to_end,
    enqueue,
    fair_share,
    gateway,
    in_flight,
    polling,
    report,
)
from bench.harness import (
    DEFAULT_REDIS_URL,
    Sampler,
    Services,
    host_load,
    host_load_probes,
    log,
    services,
)
from bench.model import ScenarioResult

# name -> scenario (a module, or a polling.Case: NAME, FULL, SMOKE, run); the table's order.
SCENARIOS: dict[str, Any] = {
    in_flight.NAME: in_flight,
    **{case.NAME: case for case in polling.CASES},
    copy_to_s3.NAME: copy_to_s3,
    end_to_end.NAME: end_to_end,
    enqueue.NAME: enqueue,
    gateway.NAME: gateway,
    fair_share.NAME: fair_share,
    console.NAME: console,
    ceiling.NAME: ceiling,
    callbacks.NAME: callbacks,
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SMOKE_DIR = RESULTS_DIR / "raw" / "smoke"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="videoqueue's benchmark: every scenario against the sandbox provider, "
        "real Redis, SeaweedFS and celery workers; writes RESULTS.md and PNG charts.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny scale, a few seconds per scenario (what CI runs)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where RESULTS.md and the charts go (default: {RESULTS_DIR}, "
        f"or {SMOKE_DIR} with --smoke)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild RESULTS.md, its notes and charts from the stored outcomes",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("VQBENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis to use (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    wanted = [n for item in args.only for n in item.split(",") if n]
    unknown = [n for n in wanted if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.only = wanted
    if args.out is None:
        args.out = SMOKE_DIR if args.smoke else RESULTS_DIR
    return args


def _run_one(name: str, module: Any, svc: Services) -> ScenarioResult:
    scale = module.SMOKE if svc.smoke else module.FULL
    start = time.time()
    log(f"{name}: starting")
    run: Callable[[Services, Any], ScenarioResult] = module.run
    sampler = Sampler(host_load_probes(), interval_s=2.0)
    try:
        with sampler:
            result = run(svc, scale)
    except Exception as e:  # one scenario's failure must not cost the others' figures
        traceback.print_exc()
        result = ScenarioResult(
            name=name,
            title=getattr(module, "title", None) or (module.__doc__ or "").split("\n")[0],
            smoke=svc.smoke,
            started_at=datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds"),
            error=f"{type(e).__name__}: {e}"[:500],
        )
    result.wall_s = time.time() - start
    if load := host_load(sampler):
        result.params["host_load"] = load
    log(f"{name}: done in {result.wall_s:.0f} s")
    return result


def conditions(results: list[ScenarioResult]) -> str:
    """One sentence on how loaded the host was while these scenarios ran."""
    loads = [(r.wall_s, r.params["host_load"]) for r in results if r.params.get("host_load")]
    if not loads:
        return ""
    total = sum(w for w, _ in loads) or 1.0
    other = sum(w * load["other_cores"] for w, load in loads) / total
    bench = sum(w * load["bench_cores"] for w, load in loads) / total
    peak = max(load["load_max"] for _, load in loads)
    cores = loads[0][1]["cores"]
    return (
        f"Host load while it ran: the benchmark's own processes used {bench:.2f} of the "
        f"{cores:g} cores on average, the rest of the host {other:.2f} (the Redis server, "
        "which the benchmark shares with whatever else runs here, such as another test "
        f"suite, among them); the 1-minute load average, the benchmark's own threads "
        f"included, peaked at {peak:g}. Each section gives its scenario's share (`host_load`)."
    )


def _last_command(results_md: Path) -> str:
    """The command a RESULTS.md says produced it (kept by --report-only)."""
    try:
        first = results_md.read_text().split("\n", 3)[2]
    except (OSError, IndexError):
        return ""
    return first.split("`")[1] if first.startswith("`") else ""


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, store their outcomes, and rebuild RESULTS.md."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    names = args.only or list(SCENARIOS)
    raw_dir: Path = args.out / "raw"
    started = time.time()
    fresh: dict[str, ScenarioResult] = {}
    if not args.report_only:
        where = report.machine()  # the commit measured, before anyone changes the tree
        with services(raw_dir, redis_url=args.redis_url, smoke=args.smoke) as svc:
            for name in names:
                fresh[name] = _run_one(name, SCENARIOS[name], svc)
                fresh[name].machine = where
                fresh[name].save(raw_dir / f"{name}.json")
    results = []
    for name, scenario in SCENARIOS.items():
        if name in fresh:
            results.append(fresh[name])
        elif (raw_dir / f"{name}.json").exists():
            kept = ScenarioResult.load(raw_dir / f"{name}.json")
            if kept.smoke == args.smoke:
                if not kept.error:  # today's rows and wording of the same figures
                    if hasattr(scenario, "rows"):
                        kept.rows = scenario.rows(kept)
                    if hasattr(scenario, "notes"):
                        kept.notes = scenario.notes(kept)
                results.append(kept)
    command = "python -m bench" + (" --smoke" if args.smoke else "")
    command += "".join(f" --only {n}" for n in args.only)
    wall_s, fresh_only = time.time() - started, len(fresh) == len(results)
    if args.report_only:
        command = _last_command(args.out / "RESULTS.md") or command
        wall_s, fresh_only = sum(r.wall_s for r in results), len({r.machine for r in results}) == 1
    results_md = args.out / "RESULTS.md"
    path = report.write(
        results,
        args.out,
        wall_s=wall_s,
        command=command,
        fresh_only=fresh_only,
        # The host's load while this invocation ran: the kept scenarios' sections say theirs.
        conditions=conditions(list(fresh.values()) or results),
        order=list(SCENARIOS),
        previous=results_md.read_text() if results_md.exists() else "",
    )
    log(f"wrote {path} in {(time.time() - started) / 60:.1f} min")
    print(report.table(results))
    return 1 if any(r.error for r in fresh.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
