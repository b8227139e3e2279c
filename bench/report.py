"""RESULTS.md and its charts, from the scenarios' stored outcomes.

The table has one line per figure: scenario and metric | our figure | the same figure before
the durable schedule | the comparison's | ratio | goal | met?. Each scenario then gets a
section with the load it ran at, how it was measured, and (from its notes) what limits a goal
it missed. Charts are matplotlib PNGs: poll lateness over time, API calls per job, and RSS
over time.

The "before" figures are those of results/before/RESULTS.md, the benchmark's results at the
commit named there (deferred messages and poll tokens, one Celery message per poll), kept
as they were, charts included; RESULTS.md repeats that table at its end.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from bench.model import Row, ScenarioResult

LATENESS_PNG = "lateness.png"
CALLS_PNG = "calls_per_job.png"
RSS_PNG = "rss.png"
BEFORE_MD = Path(__file__).resolve().parent / "results" / "before" / "RESULTS.md"
TABLE_HEADER = (
    "| scenario | our figure | before | comparison figure | ratio | goal | met? |",
    "|---|---|---|---|---|---|---|",
)
# Rows whose "before" figure was measured under another name (the metric's wording or load
# changed); the key is this table's "scenario: metric", the value the before table's.
BEFORE_ALIASES = {
    "in-flight: poll due -> poll task started p99, queue wait included (10,000 in flight)": (
        "in-flight: poll lateness p99 (10,000 in flight)"
    ),
}


def fmt(value: float | None, unit: str) -> str:
    """A figure with its unit, rounded for reading: 273 MB, 0.042 s, 1,234 jobs/s."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:.2f}"
    if unit == "s":
        return f"{value:.3f} s" if abs(value) < 1 else f"{value:,.1f} s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def _ratio(row: Row) -> str:
    ratio = row.ratio
    if ratio is None or math.isnan(ratio):
        return "—"
    return f"{ratio:.3g}×"


def _met(row: Row) -> str:
    if row.met is None:
        return "—"
    return "yes" if row.met else "**no**"


@cache
def before_figures() -> tuple[str, dict[str, str]]:
    """The before table: (its commit, "scenario: metric" -> its "our figure" cell)."""
    try:
        text = BEFORE_MD.read_text()
    except OSError:
        return "", {}
    commit = re.search(r"commit ([0-9a-f]{7,40})", text)
    figures = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 6 and cells[0] not in ("scenario", "---"):
            figures[cells[0]] = cells[1]
    return (commit.group(1) if commit else ""), figures


def before_table() -> str:
    """The before file's results table, as it was."""
    try:
        lines = BEFORE_MD.read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines if line.startswith("|"))


# End to end ran 5,000 jobs per configuration before, fewer now: per-job figures compare.
_JOBS = re.compile(r", [\d,]+ jobs\)$")


def _before(row: Row) -> str:
    key = f"{row.scenario}: {row.metric}"
    figures = before_figures()[1]
    found = figures.get(key) or figures.get(BEFORE_ALIASES.get(key, ""))
    if found is None and row.scenario == "end-to-end":
        by_shape = {_JOBS.sub(")", k): v for k, v in figures.items() if k.startswith("end-to-end")}
        found = by_shape.get(_JOBS.sub(")", key))
    return found or "—"


def table(results: list[ScenarioResult], carried: dict[str, list[str]] | None = None) -> str:
    """The markdown results table; `carried` rows (by scenario) go where their scenario's
    rows would."""
    lines = list(TABLE_HEADER)
    carried = carried or {}
    for result in results:
        for name in [n for n in carried if n in _before_names(result.name, carried)]:
            lines += carried.pop(name)
        if result.error:
            lines.append(f"| {result.name}: did not finish | — | — | — | — | — | **no** |")
        for row in result.rows:
            comparison = fmt(row.comparison, row.unit)
            if row.comparison is not None and row.comparison_label:
                comparison += f" ({row.comparison_label})"
            lines.append(
                f"| {row.scenario}: {row.metric} | {fmt(row.ours, row.unit)} "
                f"| {'—' if result.smoke else _before(row)} "
                f"| {comparison} | {_ratio(row)} | {row.goal or '—'} | {_met(row)} |"
            )
    for rows in carried.values():
        lines += rows
    return "\n".join(lines)


# The order of scenarios in a table, set by write() (bench/__main__.py's SCENARIOS).
_ORDER: list[str] = []


def _before_names(name: str, carried: dict[str, list[str]]) -> list[str]:
    """The carried scenarios that come before `name` in the table's order."""
    if name not in _ORDER:
        return []
    return [n for n in carried if n in _ORDER and _ORDER.index(n) < _ORDER.index(name)]


def carried_from(previous: str, names: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """From an earlier RESULTS.md, the table rows and the section of each scenario in names:
    a scenario with no stored outcome (bench/results/raw/ of another machine) keeps the
    figures it last had instead of vanishing from the file."""
    rows: dict[str, list[str]] = {}
    sections: dict[str, str] = {}
    lines = previous.splitlines()
    # The results table is the file's first; the one of the "before" figures repeats names.
    first_heading = next((k for k, ln in enumerate(lines) if ln.startswith("## ")), len(lines))
    for name in names:
        found = [ln for ln in lines[:first_heading] if ln.startswith(f"| {name}: ")]
        if found:
            rows[name] = found
        head = f"## {name}: "
        start = next((k for k, ln in enumerate(lines) if ln.startswith(head)), None)
        if start is not None:
            end = next(
                (k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")),
                len(lines),
            )
            sections[name] = "\n".join(lines[start:end]).rstrip() + "\n"
    return rows, sections


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> str:
    """One line about where the figures come from."""
    import celery
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    # What is measured is the product: the benchmark's own files do not make it "dirty".
    product = ("producer", "worker", "ops", "pyproject.toml")
    dirty = (
        " with uncommitted changes to the product"
        if _git("status", "--porcelain", "--", *product)
        else ""
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, Celery {celery.__version__}; "
        f"commit {commit}{dirty}"
    )


def _value(key: str, v: Any) -> str:
    """A parameter's value for reading: bytes in MB, floats to 4 significant digits."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(k, x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(key, x) for x in v) + "]"
    if isinstance(v, float | int) and not isinstance(v, bool) and key.endswith("_bytes"):
        return f"{v / 1e6:,.1f} MB"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _params(params: dict[str, Any]) -> list[str]:
    """A bullet per parameter; a list of records (one per load) gets a bullet each."""
    lines = []
    for key, v in params.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"- `{key}`:")
            lines += [f"  - {_value(key, x)[1:-1]}" for x in v]
        else:
            lines.append(f"- `{key}`: {_value(key, v)}")
    return lines


def write(
    results: list[ScenarioResult],
    out_dir: Path,
    *,
    wall_s: float,
    command: str,
    fresh_only: bool = True,
    conditions: str = "",
    order: list[str] | None = None,
    previous: str = "",
) -> Path:
    """Write RESULTS.md and the charts into out_dir; returns the RESULTS.md path.

    Args:
        results: Every scenario's outcome, in table order.
        out_dir: Where RESULTS.md and the PNGs go.
        wall_s: How long this invocation took.
        command: The command that produced it.
        fresh_only: Whether every outcome comes from this invocation.
        conditions: A sentence on what else loaded the host while it ran.
        order: Every scenario's name in table order.
        previous: The RESULTS.md this one replaces: the scenarios in `order` with no outcome
            keep their rows and section from it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _ORDER[:] = order or [r.name for r in results]
    have = {r.name for r in results}
    carried_rows, carried_sections = carried_from(previous, [n for n in _ORDER if n not in have])
    if carried_rows:
        fresh_only = False
    charts = charts_for(results, out_dir)
    drawn = {name for name, _ in charts}
    for name, title in re.findall(r"^!\[(.*?)\]\((.*?)\)$", previous, flags=re.MULTILINE):
        # A chart of a carried scenario: kept as it was drawn.
        if title not in drawn and (out_dir / title).exists() and "/" not in title:
            charts.append((title, name))
    smoke = any(r.smoke for r in results)
    before_commit = before_figures()[0]
    measured_on = {r.machine for r in results if r.machine}
    where = measured_on.pop() if len(measured_on) == 1 else machine()
    parts = [
        "# videoqueue benchmark results",
        "",
        f"`{command}`: {'SMOKE SCALE, not for comparison; ' if smoke else ''}"
        f"{wall_s / 60:.1f} min on {where}."
        + (
            ""
            if fresh_only
            else " Some scenarios are kept from earlier runs: each section says when it ran."
        ),
        *([conditions] if conditions else []),
        "Figures come from the sandbox provider's counters, the workers' own trace "
        "(bench/instrumented_worker.py), psutil's accounting of the real processes and Redis's "
        "own memory accounting; see bench/README.md for how each is measured. The *before* "
        f"column is the same figure at commit {before_commit or '?'}, before the durable "
        "schedule (deferred messages, one Celery message per poll): "
        "[before/RESULTS.md](before/RESULTS.md), repeated at the end of this file.",
        "",
        table(results, carried_rows),
        "",
    ]
    if charts:
        parts += ["## Charts", ""]
        parts += [f"![{title}]({name})" for name, title in charts] + [""]
    sections = {r.name: r for r in results}
    for name in _ORDER:
        if name in carried_sections:
            parts += [carried_sections[name]]
        if name not in sections:
            continue
        r = sections[name]
        parts += [f"## {r.name}: {r.title}", ""]
        parts += [f"Ran {r.started_at}, {r.wall_s:.0f} s.", ""]
        for note in r.notes:
            parts += [note, ""]
        parts += ["Parameters and raw figures:", "", *_params(r.params), ""]
        if r.error:
            parts += [f"**Did not finish:** `{r.error}`", ""]
    if not smoke and before_table():
        parts += [
            f"## Before: the results at commit {before_commit or '?'}",
            "",
            "As [before/RESULTS.md](before/RESULTS.md) has them (its sections say how each "
            "was measured then; its charts are in before/).",
            "",
            before_table(),
            "",
        ]
    path = out_dir / "RESULTS.md"
    path.write_text("\n".join(parts))
    return path


# --- charts --------------------------------------------------------------------------------


def charts_for(results: list[ScenarioResult], out_dir: Path) -> list[tuple[str, str]]:
    """Draw every chart whose data is present; returns (file name, title) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    by_name = {r.name: r for r in results if not r.error}
    drawn = []
    for name, title, draw in (
        (LATENESS_PNG, "Poll lateness over time", _lateness),
        (CALLS_PNG, "API status calls and detection latency per job", _calls),
        (RSS_PNG, "RSS over time", _rss),
    ):
        if draw(by_name, out_dir / name):
            drawn.append((name, title))
    return drawn


def _load_label(flight: ScenarioResult, jobs: int) -> str:
    """ "10,000 jobs in flight", or, for a load that never was all at the provider at once,
    "100,000 enqueued, at most 4,944 in flight"."""
    loads: list[dict[str, Any]] = flight.params.get("loads", [])
    figures: dict[str, Any] = next((f for f in loads if f.get("jobs") == jobs), {})
    peak = figures.get("in_flight_peak")
    if peak is None or peak >= jobs:
        return f"{jobs:,} jobs in flight"
    return f"{jobs:,} enqueued, at most {peak:,.0f} in flight"


def _lateness(by_name: dict[str, ScenarioResult], path: Path) -> bool:
    import matplotlib.pyplot as plt

    loads = by_name.get("in-flight", ScenarioResult("", "", False, "")).series.get("loads", [])
    loads = [load for load in loads if load.get("lateness")]
    if not loads:
        return False
    fig, axes = plt.subplots(len(loads), 1, figsize=(9, 3.4 * len(loads)), squeeze=False)
    for ax, load in zip(axes[:, 0], loads, strict=True):
        t = [p[0] for p in load["lateness"]]
        late = [p[1] for p in load["lateness"]]
        ax.scatter(
            t, late, s=2, alpha=0.3, color="tab:blue", label="poll lateness at claim (s, worst)"
        )
        ax.axhline(1.0, color="tab:red", linewidth=1, linestyle="--", label="goal: p99 < 1 s")
        ax.set_ylim(bottom=min(0.0, *late), top=max(1.2, *late) * 1.05)
        ax.set_xlabel("seconds since the first enqueue")
        ax.set_ylabel("claimed - due (s)")
        ax.set_title(f"{_load_label(by_name['in-flight'], load['jobs'])}, one worker host")
        twin = ax.twinx()
        flight = load.get("in_flight", [])
        twin.plot(
            [p[0] for p in flight],
            [p[1] for p in flight],
            color="tab:green",
            linewidth=1.2,
            label="jobs in flight at the sandbox",
        )
        twin.set_ylabel("in flight")
        handles = ax.get_legend_handles_labels()
        twin_handles = twin.get_legend_handles_labels()
        ax.legend(
            handles[0] + twin_handles[0],
            handles[1] + twin_handles[1],
            loc="center right",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _calls(by_name: dict[str, ScenarioResult], path: Path) -> bool:
    import matplotlib.pyplot as plt

    cases = [
        r
        for name, r in by_name.items()
        if name.startswith("polling") and r.series.get("ours") and r.series.get("baseline")
    ]
    if not cases:
        return False
    fig, axes = plt.subplots(len(cases), 2, figsize=(11, 3.8 * len(cases)), squeeze=False)
    for (calls, latency), result in zip(axes, cases, strict=True):
        ours, theirs = result.series["ours"], result.series["baseline"]
        for points, label, marker in ((ours, "videoqueue", "o"), (theirs, "fixed 1 s poll", "x")):
            calls.scatter(
                [p[0] for p in points], [p[1] for p in points], s=14, marker=marker, label=label
            )
            done = [p for p in points if p[2] is not None]
            latency.scatter(
                [p[0] for p in done], [max(p[2], 0.01) for p in done], s=14, marker=marker,
                label=label,
            )  # fmt: skip
        generation = sorted({p[0] for p in ours + theirs})
        latency.plot(
            generation,
            [max(0.1 * g, 2.0) for g in generation],
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label="goal: max(10 % of generation, 2 s)",
        )
        for ax in (calls, latency):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = [
                t
                for t in (10, 20, 30, 60, 120, 300, 600)
                if generation[0] / 2 < t < generation[-1] * 2
            ]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("generation time (s, unscaled)")
            ax.legend(fontsize=8)
        calls.set_ylabel("answered status calls for the job")
        calls.set_title(f"{result.name}: status calls per job", fontsize=10)
        latency.set_ylabel("ready -> noticed (s, unscaled)")
        latency.set_title(f"{result.name}: detection latency", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _rss(by_name: dict[str, ScenarioResult], path: Path) -> bool:
    import matplotlib.pyplot as plt

    flight = by_name.get("in-flight")
    copy = by_name.get("copy")
    panels = []
    if flight is not None and flight.series.get("loads"):
        panels.append("in-flight")
    if copy is not None and copy.series.get("rss"):
        panels.append("copy")
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "in-flight" and flight is not None:
            for load in flight.series["loads"]:
                points = load.get("rss_ours", [])
                ax.plot(
                    [p[0] for p in points],
                    [p[1] / 1e6 for p in points],
                    label=f"worker tree, {_load_label(flight, load['jobs'])}",
                )
            base = flight.series.get("rss_baseline", [])
            if base:
                ax.plot(
                    [p[0] for p in base],
                    [p[1] / 1e6 for p in base],
                    label=f"thread per job, {flight.series.get('baseline_jobs', 0):,} threads",
                )
            ax.axhline(300, color="tab:red", linestyle="--", linewidth=1, label="goal: 300 MB")
            ax.set_title("In flight: RSS")
            ax.set_xlabel("seconds since start")
            ax.set_ylabel("RSS (MB)")
        elif copy is not None:
            points = copy.series["rss"]
            ax.plot([p[0] for p in points], [p[1] / 2**20 for p in points], label="worker tree")
            window = copy.series.get("copy_window")
            if window:
                ax.axvspan(
                    window[0], window[1], color="tab:orange", alpha=0.15, label="finalize copying"
                )
            ax.set_title("Copy of a 1 GiB MP4: worker RSS")
            ax.set_xlabel("seconds since the job was enqueued")
            ax.set_ylabel("RSS (MiB)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
