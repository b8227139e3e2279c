"""What a scenario hands back: table rows, notes for its section, and data for the charts.

Plain dataclasses that round-trip through JSON, so that each scenario's outcome is stored in
``raw/<scenario>.json`` and RESULTS.md can be rebuilt from the latest outcome of every
scenario (``--only`` reruns one and keeps the others' figures).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One line of the results table: a figure of ours, the comparison's, and the goal.

    Attributes:
        scenario: The scenario's name (``in-flight``, ``polling``...); the table's first column
            starts with it.
        metric: What is measured, with the load (e.g. "worker RSS, 10,000 in flight").
        ours: Our figure, in ``unit``.
        unit: How figures are printed: ``MB``, ``MiB``, ``s``, ``ms``, ``jobs/s``, ``calls``...
        comparison: The comparison's figure in the same unit; None when there is none.
        comparison_label: What the comparison is ("thread per job", "boto3 upload_file").
        goal: The goal as text ("< 300 MB"); empty when the row only informs.
        met: Whether the goal is met; None when the row has no goal.
    """

    scenario: str
    metric: str
    ours: float
    unit: str
    comparison: float | None = None
    comparison_label: str = ""
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """ours / comparison, when both exist and the comparison is not zero."""
        if self.comparison is None or self.comparison == 0:
            return None
        return self.ours / self.comparison


@dataclass
class ScenarioResult:
    """A scenario's outcome.

    Attributes:
        name: The scenario's command-line name.
        title: A heading for its section of RESULTS.md.
        smoke: Whether it ran at smoke scale.
        started_at: ISO time the scenario started.
        wall_s: How long it took, set-up and tear-down included.
        params: The load and settings it ran with (printed in its section).
        rows: Its lines of the results table.
        notes: Markdown paragraphs: how it was measured, what limits a miss, what would fix it.
        series: Data for the charts (lists of numbers, by name).
        error: Why the scenario could not finish, if it could not.
        machine: Where it ran: cores, CPU, Python, Celery, the commit measured.
    """

    name: str
    title: str
    smoke: bool
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    wall_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    machine: str = ""

    def save(self, path: Path) -> None:
        """Write the outcome as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> ScenarioResult:
        """Read an outcome written by save()."""
        data = json.loads(path.read_text())
        data["rows"] = [Row(**row) for row in data.get("rows", [])]
        return cls(**data)
