"""The benchmark at smoke scale, so that the bench code cannot rot.

CI does not run the full benchmark (about half an hour); it runs ``python -m bench --smoke``,
every scenario at tiny scale against the real services (in a few groups), into a temporary
directory (never over the committed bench/results), and checks the RESULTS.md it writes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from bench.__main__ import SCENARIOS
from bench.report import CALLS_PNG, LATENESS_PNG, RSS_PNG
from tests.e2e.subprocesses import run_whole

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HEADER = "| scenario | our figure | before | comparison figure | ratio | goal | met? |"
_NUMBER = re.compile(r"^-?[\d,]*\.?\d+")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _figure(cell: str) -> float | None:
    """The number a table cell starts with ("1,234 jobs/s" -> 1234.0), None if it has none."""
    match = _NUMBER.match(cell)
    return float(match.group().replace(",", "")) if match else None


# The scenarios in a few runs, so that xdist spreads them over its workers (one run of all of
# them took ~5 min, the suite's longest test), each with the charts its scenarios feed.
GROUPS = {
    "in-flight,copy": (LATENESS_PNG, RSS_PNG),
    "polling-flaky,polling-no-progress,polling": (CALLS_PNG,),
    "end-to-end,enqueue,gateway": (),
    "fair-share,console": (),
    "ceiling,callbacks": (),
}


def test_the_groups_cover_every_scenario_once() -> None:
    named = [name for group in GROUPS for name in group.split(",")]
    assert sorted(named) == sorted(SCENARIOS)


@pytest.mark.timeout(660)
@pytest.mark.parametrize("group", list(GROUPS))
def test_smoke_run_writes_a_results_table_with_real_figures_for_every_scenario(
    tmp_path: Path, group: str
) -> None:
    """Every scenario finishes, has its rows in the table with real figures, and the
    charts are drawn; the committed results are left alone."""
    committed = ROOT / "bench" / "results" / "RESULTS.md"
    before = committed.read_bytes() if committed.exists() else None
    run = run_whole(
        [sys.executable, "-m", "bench", "--smoke", "--only", group, "--out", str(tmp_path)],
        ROOT,
        timeout_s=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    text = (tmp_path / "RESULTS.md").read_text()
    assert HEADER in text
    lines = text.splitlines()
    start = lines.index(HEADER)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    assert all(len(row) == 7 for row in rows), rows
    for name in group.split(","):
        mine = [row for row in rows if row[0].startswith(f"{name}: ")]
        assert mine, f"no row for scenario {name}"
        assert not any("did not finish" in row[0] for row in mine), mine
        ours = [_figure(row[1]) for row in mine]
        assert all(value is not None for value in ours), f"{name}: a figure is missing: {mine}"
        assert any(value for value in ours), f"{name}: every figure is zero: {mine}"
        assert all(row[6] in ("yes", "**no**", "—") for row in mine), mine

    for chart in GROUPS[group]:
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
    assert (committed.read_bytes() if committed.exists() else None) == before
