"""The metrics endpoint, scraped from real worker processes (prefork pool, multiprocess mode)."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from producer import cancel, enqueue, get
from producer.core.errors import ERROR_CODES
from producer.core.records import TERMINAL, JobStatus
from tests.e2e.conftest import eventually
from worker.metrics import exported_names

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "videoqueue.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def by(samples: dict[tuple[tuple[str, str], ...], float], label: str) -> Counter[str]:
    """Sum of the samples by one label's value."""
    out: Counter[str] = Counter()
    for labels, value in samples.items():
        out[dict(labels)[label]] += value
    return out


def test_scraped_counters_match_the_records_and_the_sandbox(make_pipeline):
    """After N jobs (completed, failed at the provider, cancelled) the endpoint counts each
    job once by its record's status, and counts provider requests as the sandbox does."""
    port = free_port()
    p = make_pipeline(
        sandbox={"fail_rate": 0.3, "error_rate": 0.15, "seed": 7},
        env={"VIDEOQUEUE_METRICS_PORT": str(port), "VIDEOQUEUE_MAX_IN_FLIGHT": "4"},
        concurrency=3,
    )
    job_ids = [enqueue(p.request(), settings=p.settings) for _ in range(8)]
    cancelled = enqueue(p.request(), settings=p.settings)
    cancel(cancelled, settings=p.settings)
    job_ids.append(cancelled)

    def ended() -> list[JobStatus] | None:
        statuses = [get(j, settings=p.settings).status for j in job_ids]
        return statuses if all(s in TERMINAL for s in statuses) else None

    statuses = eventually(ended, timeout_s=60)
    by_status = Counter(s.value for s in statuses)
    assert by_status["cancelled"] == 1 and by_status["completed"] and by_status["failed"]
    # Webhooks and their counts settle after the jobs end.
    eventually(lambda: len(p.receiver.verified_events()) >= len(job_ids) - 1, 30)

    samples = scrape(port)
    finished = by(samples["videoqueue_jobs_finished_total"], "status")
    assert {k: v for k, v in finished.items() if v} == by_status
    assert sum(finished.values()) == len(job_ids)

    stats = p.sandbox.stats(include_tasks=False)["totals"]
    requests = samples["videoqueue_provider_requests_total"]
    per_op_ok = Counter()
    for labels, value in requests.items():
        label = dict(labels)
        if label["code"] == "2xx":
            per_op_ok[label["operation"]] += value
    assert per_op_ok["create"] == stats["creates"]
    assert per_op_ok["status"] == stats["status_queries"]
    assert per_op_ok["download"] == stats["downloads"] == by_status["completed"]
    # Every answer the sandbox gave, by status class, is one we counted (5xx included).
    answered = Counter()
    for code, n in stats["responses_by_code"].items():
        answered[f"{code[0]}xx"] += n
    assert by(requests, "code") == answered
    assert answered["5xx"] > 0, "error_rate should have produced some 5xx answers"

    # The rest of the families are there, fed by the pool processes and the pump.
    steps = by(samples["videoqueue_step_duration_seconds_count"], "step")
    assert steps["submit"] >= 9 - 1 and steps["finalize"] >= by_status["completed"]
    assert sum(samples["videoqueue_schedule_claimed_total"].values()) > 0
    delivered = by(samples["videoqueue_webhook_deliveries_total"], "result")["delivered"]
    assert delivered >= len(job_ids) - 1
    assert sum(samples["videoqueue_s3_copied_bytes_total"].values()) > 0
    assert samples["videoqueue_redis_up"][()] == 1
    assert list(samples["videoqueue_provider_in_flight_limit"].values()) == [4]
    assert list(samples["videoqueue_provider_in_flight"].values()) == [0]  # every slot back
    assert {k: v for k, v in by(samples["videoqueue_jobs"], "status").items() if v} == by_status

    # Every name the endpoint served is one the worker declares, and every name the Grafana
    # dashboard queries was really served.
    assert set(samples) - {n for n in samples if n.endswith("_created")} <= exported_names()
    from tests.unit.test_dashboard import dashboard_metric_names

    assert dashboard_metric_names(json.loads(DASHBOARD.read_text())) <= set(samples)


def test_labels_come_from_bounded_sets_whatever_hosts_and_codes_providers_choose(
    make_pipeline,
):
    """Downloads answered by another host (a CDN the file URL redirects to) and failures
    with the provider's own codes: every provider label is a configured provider's name and
    every failure code one of ours or "other", so the series stay as many as the config."""
    port = free_port()
    p = make_pipeline(sandbox={"seed": 5}, env={"VIDEOQUEUE_METRICS_PORT": str(port)})
    p.sandbox.configure(cdn_base_url=p.settings.api_base_url.replace("127.0.0.1", "localhost"))
    completed = [enqueue(p.request(), settings=p.settings) for _ in range(2)]
    eventually(lambda: all(get(j, settings=p.settings).status in TERMINAL for j in completed))
    p.sandbox.configure(fail_rate=1.0)
    failed = [enqueue(p.request(), settings=p.settings) for _ in range(3)]
    eventually(lambda: all(get(j, settings=p.settings).status in TERMINAL for j in failed))
    codes = [get(j, settings=p.settings).error.code for j in failed]
    theirs = [c for c in codes if c not in ERROR_CODES]
    assert theirs  # the provider's own codes (content_policy_violation, ...)

    samples = eventually(lambda: (s := scrape(port)).get("videoqueue_job_failures_total") and s)
    assert p.sandbox.stats()["totals"]["redirects"] >= 2
    requests = samples["videoqueue_provider_requests_total"]
    assert set(by(requests, "provider")) == {"default"}
    assert by(requests, "operation")["download"] >= 2
    failures = by(samples["videoqueue_job_failures_total"], "code")
    assert set(failures) <= ERROR_CODES | {"other"} and sum(failures.values()) == len(failed)
    assert failures["other"] == len(theirs)
