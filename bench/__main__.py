"""``python -m bench``: run the benchmark scenarios and write RESULTS.md with its charts.

    python -m bench                      # every scenario, full scale -> bench/results/
    python -m bench --only copy          # one scenario (the others keep their last figures)
    python -m bench --smoke --out DIR    # every scenario at tiny scale, a few seconds each

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

from bench import copy_to_s3, end_to_end, enqueue, in_flight, polling, report
from bench.harness import DEFAULT_REDIS_URL, Services, log, services
from bench.model import ScenarioResult

# name -> (module); the order is the table's.
SCENARIOS: dict[str, Any] = {
    in_flight.NAME: in_flight,
    polling.NAME: polling,
    copy_to_s3.NAME: copy_to_s3,
    end_to_end.NAME: end_to_end,
    enqueue.NAME: enqueue,
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
    try:
        result = run(svc, scale)
    except Exception as e:  # one scenario's failure must not cost the others' figures
        traceback.print_exc()
        result = ScenarioResult(
            name=name,
            title=getattr(module, "__doc__", "").split("\n")[0],
            smoke=svc.smoke,
            started_at=datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds"),
            error=f"{type(e).__name__}: {e}"[:500],
        )
    result.wall_s = time.time() - start
    log(f"{name}: done in {result.wall_s:.0f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, store their outcomes, and rebuild RESULTS.md."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    names = args.only or list(SCENARIOS)
    raw_dir: Path = args.out / "raw"
    started = time.time()
    fresh: dict[str, ScenarioResult] = {}
    with services(raw_dir, redis_url=args.redis_url, smoke=args.smoke) as svc:
        for name in names:
            fresh[name] = _run_one(name, SCENARIOS[name], svc)
            fresh[name].save(raw_dir / f"{name}.json")
    results = []
    for name in SCENARIOS:
        if name in fresh:
            results.append(fresh[name])
        elif (raw_dir / f"{name}.json").exists():
            kept = ScenarioResult.load(raw_dir / f"{name}.json")
            if kept.smoke == args.smoke:
                results.append(kept)
    command = "python -m bench" + (" --smoke" if args.smoke else "")
    command += "".join(f" --only {n}" for n in args.only)
    path = report.write(
        results,
        args.out,
        wall_s=time.time() - started,
        command=command,
        fresh_only=len(fresh) == len(results),
    )
    log(f"wrote {path} in {(time.time() - started) / 60:.1f} min")
    print(report.table(results))
    return 1 if any(r.error for r in fresh.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
