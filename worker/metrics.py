"""Prometheus metrics: defined here, each attached at one place, served by every worker host.

With VIDEOQUEUE_METRICS_PORT set, the worker's main process serves /metrics on that port:
- counters and histograms that the pool processes (and the main process's pump) update, in
  prometheus-client's multiprocess mode: each process writes its own files under
  PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory unless set; emptied when the worker
  starts), and the endpoint sums them; a pool process that exits is marked dead;
- deployment-wide figures read from Redis at scrape time (producer/core/stats.py): jobs by status
  and jobs finished by status, schedule depth per lane, provider slots per account, dead
  letters. Every host reports the same value for these: aggregate them with max(), not sum().

Where each is counted (one place each):
- videoqueue_jobs_finished_total{status}: counted in Redis in the same transaction as the
  job's terminal transition (producer/core/store.py), so each job counts once however often its
  steps run, whoever ended it (a producer's cancel too); videoqueue_jobs{status} likewise;
- videoqueue_provider_requests_total{provider,operation,code}: ProviderClient._call (create,
  status, cancel) and the download (worker/storage.py); provider is the provider's name in
  the configuration (never the host that answered), code the answer's HTTP status class
  (2xx, 3xx, 4xx, 5xx) or "error" when no answer came (timeout, connection refused);
- videoqueue_step_duration_seconds{step}: the base task class (worker/steps.py);
- videoqueue_schedule_lateness_seconds{lane} and videoqueue_schedule_claimed_total{lane}:
  the pump, from what each claim reports;
- videoqueue_job_failures_total{code}: Job.fail (worker/job.py), once the failure is
  committed; code is one of ours (producer/core/errors.py ERROR_CODES) or "other";
- videoqueue_webhook_deliveries_total{result}: worker/webhooks.py send_event;
- videoqueue_s3_copied_bytes_total: worker/storage.py, once an upload completed;
- videoqueue_tenant_charged_usd{tenant} and videoqueue_tenant_reserved_usd{tenant}: the
  ledger's figures (producer/core/ledger.py), read at scrape time: the TOP_TENANTS tenants
  charged most by name, the rest summed under "(other)".

Every label value comes from a bounded set (our names, the configuration's): a value a
provider, a redirect or a caller could choose would add series without end, in every worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from celery import bootsteps
from celery.signals import worker_process_shutdown
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from producer.core.errors import ERROR_CODES
from producer.core.ledger import OTHER as OTHER_TENANTS
from producer.core.providers import providers
from producer.core.settings import Settings, get_settings

PROVIDER_REQUESTS = Counter(
    "videoqueue_provider_requests",
    "Requests to the video provider, by operation and HTTP status class (error: no answer).",
    ["provider", "operation", "code"],
)
STEP_DURATION = Histogram(
    "videoqueue_step_duration_seconds",
    "Time one task of a step took (a poll task queries up to poll_batch_size jobs).",
    ["step"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
SCHEDULE_LATENESS = Histogram(
    "videoqueue_schedule_lateness_seconds",
    "How late (after its due time) the most overdue entry of each claim was picked up.",
    ["lane"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SCHEDULE_CLAIMED = Counter(
    "videoqueue_schedule_claimed", "Schedule entries claimed by the pumps.", ["lane"]
)
WEBHOOK_DELIVERIES = Counter(
    "videoqueue_webhook_deliveries",
    "Webhook delivery attempts by result (delivered, gone, http_error, error, blocked).",
    ["result"],
)
JOB_FAILURES = Counter(
    "videoqueue_job_failures",
    "Jobs that failed, by their error code (counted by the worker that failed them).",
    ["code"],
)
S3_COPIED_BYTES = Counter(
    "videoqueue_s3_copied_bytes", "Bytes of finished videos copied into S3 (completed uploads)."
)

_IN_PROCESS = (
    PROVIDER_REQUESTS, STEP_DURATION, SCHEDULE_LATENESS, SCHEDULE_CLAIMED, WEBHOOK_DELIVERIES,
    JOB_FAILURES, S3_COPIED_BYTES,
)  # fmt: skip

# Where every process of this worker writes its values (None: metrics off, or not a worker),
# chosen at the worker's start (use_multiprocess_dir), and whether it is a temporary one made
# then, removed at the worker's end.
MULTIPROC_DIR: str | None = None
_OWN_DIR = False


def use_multiprocess_dir(settings: Settings) -> None:
    """At a worker's start, before its pool forks and before any value is counted: with
    metrics on, every process's values go to files in one directory (PROMETHEUS_MULTIPROC_DIR,
    a fresh temporary directory unless set), which the endpoint sums."""
    global MULTIPROC_DIR, _OWN_DIR
    if settings.metrics_port is None:
        return
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus-client reads it where each value is made, in this process and the pool's.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="videoqueue-metrics-")
        _OWN_DIR = True
    MULTIPROC_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus-client chose in-process values when it was imported, where the variable
        # was not set yet: values made from now on go to files, and the one made at import
        # (a metric without labels makes its value then) is made again.
        values.ValueClass = values.MultiProcessValue()
        for metric in _IN_PROCESS:
            if not metric._labelnames:
                metric._metric_init()


# --- the attach points' helpers ---


# The label value of anything outside a label's bounded set.
OTHER = "other"


@lru_cache(maxsize=1)
def _provider_names() -> frozenset[str]:
    return frozenset(p.name for p in providers(get_settings()))


def provider_label(name: str | None) -> str:
    """A provider's label: its name if the configuration has it, else "other"."""
    return name if name in _provider_names() else OTHER


def failure_label(code: str) -> str:
    """A failure's label: the code if it is one of ours, else "other" (the provider's)."""
    return code if code in ERROR_CODES else OTHER


def provider_request(provider: str, operation: str, response: Any) -> None:
    """Count one request to the named provider: response is the httpx.Response, or None if
    none came."""
    status = getattr(response, "status_code", None)
    code = f"{status // 100}xx" if isinstance(status, int) else "error"
    PROVIDER_REQUESTS.labels(provider_label(provider), operation, code).inc()


def job_failed(code: str) -> None:
    """Count one job failed with code."""
    JOB_FAILURES.labels(failure_label(code)).inc()


def webhook_delivery(ok: bool, status_code: int | None, blocked: bool) -> None:
    """Count one webhook delivery attempt by its result."""
    if ok:
        result = "delivered"
    elif status_code == 410:
        result = "gone"
    elif blocked:
        result = "blocked"
    else:
        result = "http_error" if status_code is not None else "error"
    WEBHOOK_DELIVERIES.labels(result).inc()


def claims(claimed: dict[Any, Any]) -> None:
    """Record what one pass of the pump claimed (lane -> worker.pump.Claimed)."""
    for lane, c in claimed.items():
        if c.entries:
            SCHEDULE_CLAIMED.labels(lane.value).inc(c.entries)
            SCHEDULE_LATENESS.labels(lane.value).observe(c.lateness_max_s)


# --- deployment-wide figures from Redis, at scrape time ---


class RedisCollector(Collector):
    """Reads producer/core/stats.py's snapshot at every scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        from producer.core.stats import read_stats
        from producer.core.store import store

        up = GaugeMetricFamily("videoqueue_redis_up", "1 if the records' Redis answered.")
        try:
            stats = read_stats(store(self.settings), self.settings)
        except Exception:  # noqa: BLE001  (a scrape reports the outage, it does not fail)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        finished = CounterMetricFamily(
            "videoqueue_jobs_finished",
            "Jobs that ended, by status, deployment-wide (counted once per job).",
            labels=["status"],
        )
        current = GaugeMetricFamily(
            "videoqueue_jobs",
            "Jobs by current status, deployment-wide.",
            labels=["status"],
        )
        for status, n in stats.finished.items():
            finished.add_metric([status], n)
        for status, n in stats.jobs.items():
            current.add_metric([status], n)
        yield finished
        yield current
        depth = GaugeMetricFamily(
            "videoqueue_schedule_entries",
            "Schedule entries per lane: due now, waiting for a later time, leased (running).",
            labels=["lane", "state"],
        )
        oldest = GaugeMetricFamily(
            "videoqueue_schedule_oldest_due_seconds",
            "How long the most overdue entry of each lane has been due.",
            labels=["lane"],
        )
        for lane, d in stats.schedule.items():
            for state in ("due", "waiting", "leased"):
                depth.add_metric([lane, state], getattr(d, state))
            oldest.add_metric([lane], d.oldest_due_s)
        yield depth
        yield oldest
        per_account = [
            ("videoqueue_provider_in_flight", stats.in_flight,
             "Generations holding a provider slot, per account (API key fingerprint)."),
            ("videoqueue_provider_in_flight_limit", stats.in_flight_cap,
             "The cap on generations at the provider (VIDEOQUEUE_MAX_IN_FLIGHT)."),
            ("videoqueue_provider_parked", stats.parked,
             "Submits due but waiting for a provider slot or a rate token, per account."),
        ]  # fmt: skip
        for name, value, doc in per_account:
            if value is not None:  # no cap set: no limit to report
                family = GaugeMetricFamily(name, doc, labels=["account"])
                family.add_metric([stats.account], value)
                yield family
        dead = GaugeMetricFamily(
            "videoqueue_webhooks_dead", "Dead-lettered webhooks (videoqueue webhooks dead)."
        )
        dead.add_metric([], stats.dead_letters)
        yield dead
        yield from _tenant_money(store(self.settings).ledger.top(TOP_TENANTS))

    def describe(self) -> Iterator[Any]:
        return iter(())  # the families depend on Redis; no need to collect at registration


# Tenants named in the money metrics (the rest are summed): a bounded label set.
TOP_TENANTS = 10


def _tenant_money(top: dict[str, tuple[float, float]]) -> Iterator[Any]:
    charged = GaugeMetricFamily(
        "videoqueue_tenant_charged_usd",
        f"What tenants' jobs were charged, USD, ever: the {TOP_TENANTS} charged most by name, "
        f'the rest summed as "{OTHER_TENANTS}".',
        labels=["tenant"],
    )
    reserved = GaugeMetricFamily(
        "videoqueue_tenant_reserved_usd",
        "What tenants' unfinished jobs hold against their budgets, USD (same tenants).",
        labels=["tenant"],
    )
    for tenant, (spent, held) in top.items():
        charged.add_metric([tenant], spent)
        reserved.add_metric([tenant], held)
    yield charged
    yield reserved


# Names the collector exports (its families are built per scrape).
_FROM_REDIS = {
    "videoqueue_redis_up": "gauge",
    "videoqueue_jobs_finished": "counter",
    "videoqueue_jobs": "gauge",
    "videoqueue_schedule_entries": "gauge",
    "videoqueue_schedule_oldest_due_seconds": "gauge",
    "videoqueue_provider_in_flight": "gauge",
    "videoqueue_provider_in_flight_limit": "gauge",
    "videoqueue_provider_parked": "gauge",
    "videoqueue_webhooks_dead": "gauge",
    "videoqueue_tenant_charged_usd": "gauge",
    "videoqueue_tenant_reserved_usd": "gauge",
}
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported_names() -> set[str]:
    """Every sample name the endpoint can serve (the dashboard's queries use only these)."""
    families = {m._name: m._type for m in _IN_PROCESS} | _FROM_REDIS
    return {name + suffix for name, kind in families.items() for suffix in _SUFFIXES[kind]}


# --- serving ---


class MetricsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep: the host's /metrics endpoint, served from the main process once
    the pool is up (so no pool process inherits its socket)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.settings = get_settings()
        self._server: Any = None
        # Steps are built before the pool forks: the last run's files go now, or they would
        # be summed with this run's (prometheus-client asks for it).
        if MULTIPROC_DIR is not None:
            mine = f"_{os.getpid()}.db"
            for entry in os.scandir(MULTIPROC_DIR):
                if entry.name.endswith(".db") and not entry.name.endswith(mine):
                    os.remove(entry.path)

    def start(self, parent: Any) -> None:
        if self.settings.metrics_port is None or MULTIPROC_DIR is None:
            return
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=MULTIPROC_DIR)
        registry.register(RedisCollector(self.settings))
        self._server, _ = start_http_server(self.settings.metrics_port, registry=registry)

    def stop(self, parent: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if _OWN_DIR and MULTIPROC_DIR:
            shutil.rmtree(MULTIPROC_DIR, ignore_errors=True)


@worker_process_shutdown.connect
def _pool_process_exits(**_: Any) -> None:
    """A pool process exits: its live gauges stop counting (its counters stay summed)."""
    if MULTIPROC_DIR is not None:
        mark_process_dead(os.getpid(), MULTIPROC_DIR)
