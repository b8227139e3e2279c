"""The chaos suite at smoke scale: every smoke scenario breaks its part while jobs run through
real workers, Redis, SeaweedFS, the sandbox and the receiver, and the invariants hold.

CI does not run the full suite (``make chaos``, 500 jobs per scenario); it runs each smoke
scenario with ``python -m bench.chaos --smoke --only NAME`` into a temporary directory (never
over the committed results) and checks every figure of the results it writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.chaos import HEADER, RECOVERY_GOAL_S, SCENARIOS
from tests.e2e.subprocesses import run_whole

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


SMOKE = [s.name for s in SCENARIOS if s.smoke]


# One scenario per test, so that xdist spreads them (all of them in one run took ~5 min, the
# suite's longest test); each still runs alone among the heavy tests.
@pytest.mark.timeout(420)  # 200 s of its own, after a failover test holding the host
@pytest.mark.parametrize("scenario", SMOKE)
def test_every_smoke_fault_loses_no_job_bills_nothing_twice_and_recovers_within_a_minute(
    alone_among_the_heavy: None, tmp_path: Path, scenario: str
) -> None:
    """The fault really took, every job ended (none lost; every one completed where the
    provider failed), no provider task without its job, every stored object is the sandbox's
    bytes, every webhook delivered or dead-lettered, no secret in a worker log, and jobs moved
    again within a minute."""
    committed = ROOT / "bench" / "results" / "chaos" / "RESULTS.md"
    before = committed.read_bytes() if committed.exists() else None
    run = run_whole(
        [
            sys.executable,
            "-m",
            "bench.chaos",
            "--smoke",
            "--only",
            scenario,
            "--out",
            str(tmp_path),
        ],
        ROOT,
        timeout_s=200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:] + _log_trouble(tmp_path)

    rows = {row["scenario"]: row for row in json.loads((tmp_path / "results.json").read_text())}
    assert set(rows) == {scenario}
    row = rows[scenario]
    assert row["fault_confirmed"], row
    assert row["completed"] + row["failed"] + row["cancelled"] == row["jobs"], row
    assert row["completed"] > 0, row
    assert row["lost"] == 0, row
    assert row["duplicate_creates"] == 0, row
    assert row["corrupt_objects"] == 0, row
    assert row["webhooks_delivered"] + row["webhooks_dead"] == row["jobs"], row
    assert row["secrets_in_logs"] == 0, row
    assert row["workers_exited"] == 0, row
    assert row["recovery_s"] is not None and row["recovery_s"] < RECOVERY_GOAL_S, row
    if row["all_complete"]:  # the provider's faults: no video paid for and lost
        assert row["completed"] == row["jobs"], row
    text = (tmp_path / "RESULTS.md").read_text()
    assert HEADER in text and f"| {scenario} |" in text
    assert (committed.read_bytes() if committed.exists() else None) == before


def _log_trouble(out: Path, lines: int = 80) -> str:
    """The warnings and errors in the logs a failed scenario kept (bench/chaos.py)."""
    found = []
    for path in sorted((out / "logs").rglob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if any(word in line for word in ("ERROR", "WARNING", "Traceback", "error")):
                found.append(f"{path.relative_to(out)}: {line[:300]}")
    return "\n" + "\n".join(found[-lines:])
