"""What every scenario shares: the services, a deployment of its own, traces and samplers.

- ``services()`` runs SeaweedFS (S3) for the whole benchmark and checks Redis answers.
- ``deployment()`` gives one scenario a sandbox provider served in this process, a key prefix
  and Celery queue of its own, and workers that run the product's app with a trace attached
  (bench/instrumented_worker.py); on exit it stops everything it started and deletes every
  Redis key it wrote, also when the scenario raised.
- ``read_trace()`` turns the workers' trace files into task runs (start, end) and the pump's
  claims (how late due work was picked up).
- ``Sampler`` records probes (RSS and CPU of a process tree, Redis memory...) over time.

Every figure in RESULTS.md comes from these: the sandbox's own counters, the workers' trace,
psutil's accounting of real processes, and Redis INFO. Nothing is estimated.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from ops.sandbox import Sandbox, SandboxConfig
from ops.stack import S3Service, WorkerProcess, celery_worker, ensure_redis, seaweedfs
from producer.core.settings import Settings

# A database of its own on the usual Redis: kombu keeps every app's unacknowledged messages in
# keys shared per database (``unacked``), where another app's restore sweep, with a shorter
# visibility timeout, would requeue ours; and a database of its own lets Redis account for
# the benchmark's memory exactly. Every key is deleted afterwards all the same.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
API_KEY = "sk-vqbench-pipeline"
# The comparison loops use their own key, so the sandbox's per-key counters keep them apart.
BASELINE_KEY = "sk-vqbench-baseline"
BUCKET = "vqbench"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"videoqueue-benchmark-webhook-key!").decode()

# The poll schedule the benchmark runs with: the product's defaults (producer/core/settings.py),
# written out so that a change of default shows here. Seconds at real time; scenarios that
# compress time scale them.
POLL_FIRST_S = 2.0
POLL_FACTOR = 1.2
POLL_CAP_S = 30.0
# The poll settings, as scenarios report them in their parameters.
POLL_PARAMS = {"poll_first_s": POLL_FIRST_S, "poll_factor": POLL_FACTOR, "poll_cap_s": POLL_CAP_S}


def poll_env(time_scale: float = 1.0) -> dict[str, str]:
    """The worker's poll settings, with every duration multiplied by time_scale.

    A scenario that runs the provider's clock time_scale times faster runs ours equally
    faster, so that call counts and latencies relative to generation time are unchanged.
    """
    return {
        "VIDEOQUEUE_POLL_FIRST_S": f"{POLL_FIRST_S * time_scale:g}",
        "VIDEOQUEUE_POLL_FACTOR": f"{POLL_FACTOR:g}",
        "VIDEOQUEUE_POLL_CAP_S": f"{POLL_CAP_S * time_scale:g}",
    }


def log(message: str) -> None:
    """Progress for the person watching the run (stderr, timestamped)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100, linear interpolation); NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


# --- services ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    """Redis and S3, shared by every scenario of a run.

    Attributes:
        redis_url: The broker and record store.
        s3: The SeaweedFS endpoint.
        bucket: The benchmark's bucket (created).
        raw_dir: Where scenarios keep traces, logs and raw data.
        smoke: Whether this is a smoke run.
    """

    redis_url: str
    s3: S3Service
    bucket: str
    raw_dir: Path
    smoke: bool


@contextmanager
def services(raw_dir: Path, *, redis_url: str, smoke: bool) -> Iterator[Services]:
    """Redis (the one at redis_url, or one started on its port) and a private SeaweedFS.

    SeaweedFS keeps its data in a temporary directory removed afterwards: the copy scenario
    writes gigabytes that nobody needs to keep.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    with (
        ensure_redis(redis_url) as url,
        tempfile.TemporaryDirectory(prefix="vqbench-s3-") as s3_dir,
        seaweedfs(Path(s3_dir)) as s3,
    ):
        s3.ensure_bucket(BUCKET)
        try:
            yield Services(url, s3, BUCKET, raw_dir, smoke)
        finally:
            _tidy(url)


# Keys kombu keeps for every app of a database, whatever its queues.
_KOMBU_SHARED = (b"unacked", b"unacked_index", b"unacked_mutex")


def _tidy(redis_url: str) -> None:
    """Delete kombu's shared bookkeeping from the database once nothing else is left in it.

    Each deployment deletes its own keys; what remains after the last one is kombu's
    (``_kombu.binding_deadlines``, an empty ``unacked``...). Left alone when the database
    holds anything else: then it is not only the benchmark's.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(count=1000))
        if keys and all(k.startswith(b"_kombu.") or k in _KOMBU_SHARED for k in keys):
            client.delete(*keys)
    finally:
        client.close()


# --- a deployment --------------------------------------------------------------------------


@dataclass
class Deployment:
    """One scenario's videoqueue: a sandbox, settings under its own prefix, and its workers.

    Attributes:
        name: The key prefix and Celery queue (unique per deployment).
        env: The environment workers and producers run with.
        settings: The same, as the producer's Settings.
        sandbox: The provider, served in this process.
        api_url: The sandbox's base URL.
        trace_dir: Where the workers' trace files and logs go.
        services: The shared services.
    """

    name: str
    env: dict[str, str]
    settings: Settings
    sandbox: Sandbox
    api_url: str
    trace_dir: Path
    services: Services
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def start_worker(
        self, *, concurrency: int = 2, pool: str = "prefork", label: str = "worker"
    ) -> WorkerProcess:
        """Start ``celery -A bench.instrumented_worker worker``; stopped with the deployment."""
        return self._stack.enter_context(
            celery_worker(
                self.env,
                concurrency=concurrency,
                pool=pool,
                logfile=self.trace_dir / f"{label}.log",
                app="bench.instrumented_worker",
                startup_timeout_s=60,
            )
        )

    def redis(self) -> redis.Redis:
        """A new client of the deployment's Redis."""
        return redis.Redis.from_url(self.services.redis_url)


@contextmanager
def deployment(
    services: Services,
    label: str,
    *,
    sandbox: dict[str, Any],
    env: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """A sandbox served in this process plus settings of its own, for one scenario.

    Args:
        services: The shared Redis and S3.
        label: Names the deployment (``vqbench-<label>-<random>``) and its trace directory.
        sandbox: SandboxConfig knobs over the benchmark's defaults (router flavor, seed 1,
            both benchmark keys).
        env: VIDEOQUEUE_* settings over the defaults (``poll_env()`` and the services').

    Yields:
        The Deployment. On exit its workers are stopped (warm shutdown, then SIGKILL),
        the sandbox stops, and every Redis key it wrote is deleted.
    """
    name = f"vqbench-{label}-{uuid.uuid4().hex[:8]}"
    trace_dir = services.raw_dir / label
    trace_dir.mkdir(parents=True, exist_ok=True)
    for old in trace_dir.glob("trace-*.tsv"):
        old.unlink()
    knobs: dict[str, Any] = {
        "flavor": "router",
        "api_key": API_KEY,
        "extra_api_keys": [BASELINE_KEY],
        "seed": 1,
    }
    knobs.update(sandbox)
    sb = Sandbox(SandboxConfig(**knobs))
    try:
        with sb.serve(host="127.0.0.1", port=0) as api_url, ExitStack() as stack:
            full_env = {
                "VIDEOQUEUE_BROKER_URL": services.redis_url,
                "VIDEOQUEUE_KEY_PREFIX": name,
                "VIDEOQUEUE_QUEUE": name,
                "VIDEOQUEUE_API_BASE_URL": api_url,
                "VIDEOQUEUE_API_KEY": API_KEY,
                "VIDEOQUEUE_API_FORMAT": "openai",
                "VIDEOQUEUE_S3_BUCKET": services.bucket,
                "VIDEOQUEUE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                # The receiver is on loopback, which workers refuse unless told.
                "VIDEOQUEUE_URL_ALLOWLIST": "127.0.0.0/8",
                **services.s3.env(),
                **poll_env(),
                **(env or {}),
                "VQBENCH_TRACE_DIR": str(trace_dir),
            }
            fields: dict[str, Any] = {
                k.removeprefix("VIDEOQUEUE_").lower(): v
                for k, v in full_env.items()
                if k.startswith("VIDEOQUEUE_")
            }
            settings = Settings(**fields)
            dep = Deployment(name, full_env, settings, sb, api_url, trace_dir, services)
            # Workers stop (and hand back their messages) before the keys are deleted.
            stack.callback(purge, services.redis_url, name)
            stack.enter_context(dep._stack)
            yield dep
    finally:
        sb.close()


def purge(redis_url: str, name: str) -> int:
    """Delete every key of deployment name, and its messages from kombu's shared keys.

    kombu keeps each delivered but unacknowledged message in two keys shared by every app
    on the Redis database (``unacked``, ``unacked_index``); a worker that was killed rather
    than stopped leaves ours there, where another app's restore sweep would requeue them.

    Returns:
        How many keys and entries were deleted.
    """
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{name}*", count=2000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
        # kombu's exchange bindings of the deployment's queues (``_kombu.binding.<queue>``,
        # and ``_kombu.binding_permanent.<queue>`` since kombu 5.6).
        bindings = list(client.scan_iter(match=f"_kombu.binding*.{name}*", count=2000))
        if bindings:
            deleted += int(client.delete(*bindings))
        tags = []
        for tag, payload in client.hscan_iter("unacked", count=2000):
            try:
                routing_key = json.loads(payload)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == name:
                tags.append(tag)
        for start in range(0, len(tags), 1000):
            chunk = tags[start : start + 1000]
            pipe = client.pipeline(transaction=False)
            pipe.hdel("unacked", *chunk)
            pipe.zrem("unacked_index", *chunk)
            deleted += int(pipe.execute()[0])
    finally:
        client.close()
    return deleted


def wait_until(
    check: Callable[[], bool], timeout_s: float, every_s: float = 0.5, what: str = "condition"
) -> bool:
    """Poll check() until it is true or timeout_s passes; returns whether it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            log(f"gave up waiting for {what} after {timeout_s:.0f} s")
            return False
        time.sleep(every_s)


# --- traces --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRun:
    """One execution of a task by a worker, from the trace.

    Attributes:
        task: The task's short name: submit, poll, finalize, notify, notify_batch.
        task_id: Celery's id of this message: the token of the claim it carries.
        members: The schedule entries (job ids; a batch id for notify_batch) it ran on: up
            to VIDEOQUEUE_POLL_BATCH_SIZE for a poll, one for every other task.
        started_at: Epoch seconds it started (task_prerun).
        redelivered: Whether the broker had delivered this message before.
        ended_at: Epoch seconds it ended (task_postrun); None if the worker stopped first.
    """

    task: str
    task_id: str
    members: tuple[str, ...]
    started_at: float
    redelivered: bool
    ended_at: float | None

    @property
    def job_id(self) -> str:
        """The first (for every task but a poll, the only) entry it ran on."""
        return self.members[0] if self.members else "-"


@dataclass(frozen=True)
class Claim:
    """One lane's share of one pass of a worker's pump (worker/pump.py), from the trace.

    Attributes:
        at: Epoch seconds the pass returned.
        lane: The schedule lane: poll, submit, finalize, notify, notify_batch.
        entries: Entries claimed (due jobs handed to Celery).
        lateness_total_s: Their lateness (claim time minus due time, by Redis's clock), summed.
        lateness_max_s: The worst of them.
        tokens: The Celery task ids of the messages the claim pushed.
    """

    at: float
    lane: str
    entries: int
    lateness_total_s: float
    lateness_max_s: float
    tokens: tuple[str, ...]

    @property
    def lateness_mean_s(self) -> float:
        """The claim's average lateness per entry."""
        return self.lateness_total_s / self.entries if self.entries else 0.0


@dataclass(frozen=True)
class Trace:
    """Everything the instrumented workers wrote: task runs and pump claims, in time order."""

    runs: list[TaskRun]
    claims: list[Claim]

    def claim_of(self) -> dict[str, Claim]:
        """Each message's claim, by its Celery task id (the claim token)."""
        return {token: c for c in self.claims for token in c.tokens}


def read_trace(trace_dir: Path) -> Trace:
    """Every task run and pump claim recorded in trace_dir (bench/instrumented_worker.py)."""
    starts: dict[str, list[str]] = {}
    ends: dict[str, float] = {}
    claims: list[Claim] = []
    for path in trace_dir.glob("trace-*.tsv"):
        for line in path.read_text().splitlines():
            fields = line.split("\t")
            if fields[0] == "S" and len(fields) == 6:
                starts[fields[3]] = fields
            elif fields[0] == "E" and len(fields) == 4:
                ends[fields[3]] = float(fields[1])
            elif fields[0] == "C" and len(fields) == 9:
                prefix, first, last = fields[6], int(fields[7]), int(fields[8])
                claims.append(
                    Claim(
                        at=float(fields[1]),
                        lane=fields[2],
                        entries=int(fields[3]),
                        lateness_total_s=float(fields[4]),
                        lateness_max_s=float(fields[5]),
                        tokens=tuple(f"{prefix}{i}" for i in range(first, last + 1)),
                    )
                )
    runs = [
        TaskRun(
            task=f[2].rsplit(".", 1)[-1],
            task_id=f[3],
            members=tuple(m for m in f[4].split(",") if m and m != "-"),
            started_at=float(f[1]),
            redelivered=f[5] == "1",
            ended_at=ends.get(f[3]),
        )
        for f in starts.values()
    ]
    runs.sort(key=lambda r: r.started_at)
    claims.sort(key=lambda c: c.at)
    return Trace(runs, claims)


def weighted_percentile(pairs: Sequence[tuple[float, int]], q: float) -> float:
    """The q-th percentile (0-100) of values each counted weight times; NaN for none.

    Claims are traced per claim, not per entry: a claim of 50 entries with worst lateness
    0.2 s counts as 50 entries 0.2 s late, an upper bound for each of them.
    """
    pairs = [(v, w) for v, w in pairs if w > 0]
    if not pairs:
        return float("nan")
    values = np.asarray([v for v, _ in pairs], dtype=float)
    weights = np.asarray([w for _, w in pairs], dtype=float)
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    cumulative = np.cumsum(weights)
    rank = q / 100 * cumulative[-1]
    index = int(np.searchsorted(cumulative, rank, side="left"))
    return float(values[min(index, len(values) - 1)])


# --- sampling real processes ---------------------------------------------------------------


class ProcessTree:
    """A process and all its descendants, as psutil sees them.

    CPU time is remembered per pid, so a child that exits still counts.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu_s_by_pid: dict[int, float] = {}

    def processes(self) -> list[psutil.Process]:
        """The live members of the tree."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _each(self, read: Callable[[psutil.Process], float]) -> float:
        total = 0.0
        for proc in self.processes():
            try:
                total += read(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return total

    def rss_bytes(self) -> float:
        """Resident memory of every member, summed (shared pages count once per process)."""
        return self._each(lambda p: float(p.memory_info().rss))

    def root_rss_bytes(self) -> float:
        """Resident memory of the root process alone (a worker's main process)."""
        try:
            return float(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return float("nan")

    def root_cpu_s(self) -> float:
        """User plus system CPU seconds of the root process alone."""
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return float("nan")
        return float(times.user + times.system)

    def pss_bytes(self) -> float:
        """Proportional set size, summed: shared pages split between the processes sharing
        them, so this is what the tree costs the machine (a container's memory limit)."""
        return self._each(lambda p: float(p.memory_full_info().pss))

    def threads(self) -> float:
        """Threads of every member, summed."""
        return self._each(lambda p: float(p.num_threads()))

    def cpu_s(self) -> float:
        """User plus system CPU seconds of every member ever seen."""
        for proc in self.processes():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            self._cpu_s_by_pid[proc.pid] = times.user + times.system
        return sum(self._cpu_s_by_pid.values())


def redis_used_memory_bytes(client: redis.Redis) -> float:
    """Redis's own count of the memory it uses (INFO memory, used_memory), server-wide."""
    return float(client.info("memory")["used_memory"])


def redis_keys_memory_bytes(client: redis.Redis) -> float:
    """Redis's own count (MEMORY USAGE) of every key in the client's database, summed.

    The benchmark's database holds only the running deployment's keys (and kombu's), so
    this is what the deployment costs Redis, unaffected by whatever else the server holds.
    """
    total = 0.0
    batch: list[bytes] = []

    def flush() -> float:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        batch.clear()
        return float(sum(v or 0 for v in pipe.execute()))

    for key in client.scan_iter(count=5000):
        batch.append(key)
        if len(batch) >= 2000:
            total += flush()
    if batch:
        total += flush()
    return total


def redis_server_process(client: redis.Redis) -> ProcessTree | None:
    """The redis-server process, when it runs on this machine (for its CPU time)."""
    try:
        pid = int(client.info("server")["process_id"])
        psutil.Process(pid)
    except (psutil.Error, KeyError, ValueError, redis.RedisError):
        return None
    return ProcessTree(pid)


def host_probes(client: redis.Redis) -> dict[str, Callable[[], float | None]]:
    """CPU-second probes for what shares the host with the workers.

    ``sandbox``: this process, which serves the sandbox provider (and samples);
    ``s3``: SeaweedFS; ``redis``: redis-server, when it runs on this machine.
    """
    me = psutil.Process()
    weed = next(
        (ProcessTree(p.pid) for p in me.children(recursive=True) if p.name() == "weed"), None
    )
    redis_proc = redis_server_process(client)
    return {
        "sandbox_cpu": lambda: sum(me.cpu_times()[:2]),
        "s3_cpu": weed.cpu_s if weed else lambda: None,
        "redis_cpu": redis_proc.cpu_s if redis_proc else lambda: None,
    }


def host_load_probes() -> dict[str, Callable[[], float | None]]:
    """Probes for how busy the whole host is, and how much of that is the benchmark's.

    ``host_cpu``: CPU seconds every process on the host used (psutil's cpu_times: user,
    nice, system, irq, softirq, steal); ``bench_cpu``: this process and every process it
    started (workers, SeaweedFS, the comparison); ``load``: the 1-minute load average. The
    difference is what the rest of the host (another test suite, and the Redis server the
    benchmark shares) took from the same cores.
    """
    tree = ProcessTree(os.getpid())

    def host_cpu() -> float:
        t = psutil.cpu_times()._asdict()
        # Busy time; guest time is already counted in user on Linux.
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        return float(sum(t.get(name, 0.0) for name in busy))

    return {
        "host_cpu": host_cpu,
        "bench_cpu": tree.cpu_s,
        "load": lambda: psutil.getloadavg()[0],
    }


def host_load(sampler: Sampler) -> dict[str, float]:
    """What host_load_probes() saw: cores busy on the host, used by the benchmark, and by
    everything else, on average; and the highest 1-minute load average."""
    host, bench = sampler.series["host_cpu"], sampler.series["bench_cpu"]
    if len(host) < 2:
        return {}
    elapsed = host[-1][0] - host[0][0]
    busy = (host[-1][1] - host[0][1]) / elapsed
    ours = (bench[-1][1] - bench[0][1]) / elapsed if len(bench) > 1 else 0.0
    return {
        "cores": float(psutil.cpu_count() or 0),
        "busy_cores": round(busy, 2),
        "bench_cores": round(ours, 2),
        "other_cores": round(max(0.0, busy - ours), 2),
        "load_max": round(sampler.peak("load"), 1),
    }


def spent(series: list[tuple[float, float]], start: float, end: float) -> float:
    """How much a cumulative probe (CPU seconds) grew between start and end (epoch s)."""
    inside = [v for t, v in series if start <= t <= end]
    return inside[-1] - inside[0] if len(inside) > 1 else 0.0


class Sampler:
    """Calls each probe every interval_s in a background thread, keeping (time, value) series.

    Use as a context manager: the first sample is taken on entry, the last on exit. A probe
    that raises or returns None is skipped for that tick.

    Args:
        probes: Named callables returning a number.
        interval_s: Time between samples.
    """

    def __init__(
        self, probes: Mapping[str, Callable[[], float | None]], interval_s: float = 1.0
    ) -> None:
        self.probes = probes
        self.interval_s = interval_s
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in probes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vqbench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Take one sample of every probe now."""
        now = time.time()
        for name, probe in self.probes.items():
            try:
                value = probe()
            except Exception:  # a vanished process or a busy Redis must not end the run
                continue
            if value is not None:
                self.series[name].append((now, float(value)))

    def values(self, name: str) -> list[float]:
        """The sampled values of one probe."""
        return [v for _, v in self.series[name]]

    def peak(self, name: str) -> float:
        """The largest sample of one probe (NaN if none)."""
        values = self.values(name)
        return max(values) if values else float("nan")

    def first(self, name: str) -> float:
        """The first sample of one probe (NaN if none)."""
        values = self.values(name)
        return values[0] if values else float("nan")

    def relative(self, name: str, t0: float, step: int = 1) -> list[list[float]]:
        """[[seconds since t0, value], ...] of one probe, every step-th sample (for charts)."""
        return [[round(t - t0, 3), v] for t, v in self.series[name][::step]]


def child_env() -> dict[str, str]:
    """The environment for a benchmark helper subprocess: this one, unbuffered."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
