"""The Grafana dashboard queries only metric names the worker really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from worker.metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "videoqueue.json"

# PromQL words that look like names but are functions, keywords or label names.
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's panel queries use (videoqueue_* words outside
    label matchers and strings)."""
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r'"[^"]*"', '""', target["expr"])  # label values
            expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
            names |= {w for w in _NAME.findall(expr) if w.startswith("videoqueue_")}
    return names


def test_every_panel_queries_only_exported_metric_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has no panels"
    for panel in dashboard["panels"]:
        used = dashboard_metric_names({"panels": [panel]})
        assert used, f"panel {panel['title']!r} queries no videoqueue metric"
        unknown = used - exported_names()
        assert not unknown, f"panel {panel['title']!r} queries unknown names {sorted(unknown)}"


def test_the_dashboard_covers_what_operators_watch() -> None:
    """Throughput, failures by code, lateness, provider errors, in flight against the cap."""
    used = dashboard_metric_names(json.loads(DASHBOARD.read_text()))
    assert {
        "videoqueue_jobs_finished_total",
        "videoqueue_provider_requests_total",
        "videoqueue_job_failures_total",
        "videoqueue_schedule_lateness_seconds_bucket",
        "videoqueue_provider_in_flight",
        "videoqueue_provider_in_flight_limit",
    } <= used


def test_the_name_check_sees_an_unknown_name() -> None:
    """The check can fail: a misspelt metric in a query is found."""
    bogus = {"panels": [{"targets": [{"expr": 'rate(videoqueue_jobs_finishd_total{a="b"}[5m])'}]}]}
    assert dashboard_metric_names(bogus) - exported_names() == {"videoqueue_jobs_finishd_total"}
