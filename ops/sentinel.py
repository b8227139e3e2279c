"""A Redis Sentinel deployment on loopback, for the failover tests and the chaos suite.

Three redis-servers (a primary and two replicas) and three sentinels watching them, each in
its own process group with its log, its files and its config under one directory; stopped
and reaped when the block ends, also when it raised. No persistence: replicas sync from the
primary's memory (diskless), so a failover, not a restart, is what keeps the data.

    with sentinel_cluster(tmp_path) as cluster:
        env = {"VIDEOQUEUE_BROKER_URL": cluster.url, "VIDEOQUEUE_SENTINEL_MASTER": cluster.master}
        ...
        old = cluster.kill_primary()          # SIGKILL, as a machine dying
        new = cluster.wait_for_failover(old)  # a replica promoted, answering as primary

With `min_replicas_to_write=1` every server refuses writes (NOREPLICAS) while it is a primary
without a replica in sync; `stop_replicas()` leaves the primary so, `rejoin()` ends it:

    with sentinel_cluster(tmp_path, min_replicas_to_write=1) as cluster:
        stopped = cluster.stop_replicas()     # returns once the primary refuses writes
        for port in stopped:
            cluster.rejoin(port)              # back, in sync: writes are taken again
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis

from ops.serve import free_ports
from ops.stack import (
    PORT_ATTEMPTS,
    REDIS_STARTUP_TIMEOUT_S,
    REDIS_STOP_GRACE_S,
    PortTaken,
    StackError,
    _log_size,
    _owned_by,
    _redis_binary,
    _spawn,
    _stop,
    _wait_until,
)

__all__ = ["SentinelCluster", "sentinel_cluster"]

# How long a sentinel waits before it calls an unanswering primary down. Production keeps
# Redis's 30 s default or a few seconds; the tests take 1 s so that a failover fits in a test.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
# With min-replicas-to-write: a replica that has not acknowledged the replication stream for
# longer than this no longer counts (Redis's default is 10 s). A replica that exits is counted
# out at once, whatever this says; 3 s keeps one merely slow on a loaded host counted in.
MIN_REPLICAS_MAX_LAG_S = 3


@dataclass
class SentinelCluster:
    """A running Sentinel deployment.

    Attributes:
        master: the name the sentinels know the primary by.
        servers: port -> process of each redis-server (the primary and its replicas).
        sentinel_ports: each sentinel's port.
        password: the redis-servers' password (requirepass), or None.
        killed: the ports of the servers killed or stopped and not started again.
    """

    master: str
    servers: dict[int, subprocess.Popen[bytes]]
    sentinel_ports: list[int]
    password: str | None = None
    min_replicas_to_write: int = 0
    killed: list[int] = field(default_factory=list)
    # Starts a redis-server of this deployment again: (port, argv) -> its process.
    _respawn: Callable[[int, list[str]], subprocess.Popen[bytes]] | None = None
    _workdir: Path | None = None

    @property
    def url(self) -> str:
        """VIDEOQUEUE_BROKER_URL for this deployment: every sentinel, ';'-separated."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}127.0.0.1:{p}/0" for p in self.sentinel_ports)

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)

    def primary_port(self) -> int | None:
        """The primary's port as most sentinels see it (None while they cannot say)."""
        seen: dict[int, int] = {}
        for port in self.sentinel_ports:
            client = self._sentinel(port)
            try:
                found = client.execute_command("SENTINEL", "get-master-addr-by-name", self.master)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if found:
                p = int(found[1])
                seen[p] = seen.get(p, 0) + 1
        best = max(seen.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best and best[1] * 2 > len(self.sentinel_ports) else None

    def server(self, port: int) -> redis.Redis:
        """A direct client of one redis-server (to read its role, its data)."""
        return redis.Redis(port=port, password=self.password, socket_timeout=2)

    def answers_as_primary(self, port: int) -> bool:
        client = self.server(port)
        try:
            return bool(client.execute_command("ROLE")[0] == b"master")
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill_primary(self) -> int:
        """SIGKILL the primary (a machine dying: nothing flushed, no goodbye); its port."""
        port = self.primary_port()
        if port is None or port not in self.servers:
            raise StackError("the sentinels do not agree on a primary to kill")
        proc = self.servers[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed.append(port)
        return port

    def stop_replicas(self, timeout_s: float = 30.0) -> list[int]:
        """Stop every replica (SIGTERM) and wait until the primary counts none in sync (with
        min_replicas_to_write, until it refuses writes); their ports, for rejoin().

        Raises:
            StackError: when the sentinels do not agree on a primary, or it still counts a
                replica after timeout_s.
        """
        primary = self.primary_port()
        if primary is None:
            raise StackError("the sentinels do not agree on a primary")
        stopped = [port for port in self.servers if port != primary and port not in self.killed]
        for port in stopped:
            _stop(self.servers[port], self.servers[port].pid, REDIS_STOP_GRACE_S)
            self.killed.append(port)
        _wait_until(
            partial(_without_replicas, self, primary), self.servers[primary],
            f"redis-server on port {primary}", self._log(primary), timeout_s, interval_s=0.05,
        )  # fmt: skip
        return stopped

    def _log(self, port: int) -> Path:
        return (self._workdir or Path(".")) / f"redis-{port}" / "log"

    def rejoin(self, port: int, timeout_s: float = 30.0) -> None:
        """Start a killed server again on its port as a replica of the current primary (an old
        primary coming back: configured as a replica before it serves, so that no client
        writes to it as a second primary), and wait until it is in sync.

        Raises:
            StackError: when there is no primary to follow or the server does not sync in time.
        """
        primary = self.primary_port()
        if primary is None or self._respawn is None or self._workdir is None:
            raise StackError("no primary to follow: the sentinels do not agree on one")
        home = self._workdir / f"redis-{port}"
        argv = _server_argv(port, home, self.password, primary, self.min_replicas_to_write)
        self.servers[port] = self._respawn(port, argv)
        _wait_until(
            partial(_in_sync, self, port), self.servers[port], f"redis-server on port {port}",
            home / "log", timeout_s, interval_s=0.1,
        )  # fmt: skip
        self.killed.remove(port)

    def wait_for_failover(self, old_port: int, timeout_s: float = 30.0) -> int:
        """Wait until the sentinels name another primary and it answers as one; its port.

        Raises:
            StackError: when no replica was promoted in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port and self.answers_as_primary(port):
                return port
            time.sleep(0.1)
        raise StackError(f"no replica was promoted within {timeout_s:.0f} s of {old_port}")


def _server_argv(
    port: int, workdir: Path, password: str | None, primary: int | None, min_replicas: int = 0
) -> list[str]:
    argv = [
        _redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
        "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        "--repl-diskless-load", "swapdb", "--daemonize", "no",
    ]  # fmt: skip
    if password:
        # Every server may become the primary: each asks for the password and knows it.
        argv += ["--requirepass", password, "--masterauth", password]
    if min_replicas:
        # Every server may become the primary: each refuses writes without enough replicas.
        argv += ["--min-replicas-to-write", str(min_replicas),
                 "--min-replicas-max-lag", str(MIN_REPLICAS_MAX_LAG_S)]  # fmt: skip
    if primary is not None:
        argv += ["--replicaof", "127.0.0.1", str(primary)]
    return argv


def _sentinel_conf(
    port: int, workdir: Path, master: str, primary: int, password: str | None
) -> str:
    lines = [
        f"port {port}", "bind 127.0.0.1", f"dir {workdir}", "daemonize no",
        f"sentinel monitor {master} 127.0.0.1 {primary} 2",
        f"sentinel down-after-milliseconds {master} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {master} {FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {master} 2",
    ]  # fmt: skip
    if password:
        lines.append(f"sentinel auth-pass {master} {password}")
    return "\n".join(lines) + "\n"


@contextmanager
def sentinel_cluster(
    workdir: Path,
    *,
    master: str = "mymaster",
    password: str | None = None,
    replicas: int = 2,
    min_replicas_to_write: int = 0,
) -> Iterator[SentinelCluster]:
    """Run a primary, its replicas and three sentinels on loopback for the block.

    Args:
        workdir: where every process's files, config and log go.
        master: the name the sentinels monitor the primary under.
        password: requirepass (and masterauth, auth-pass) of the redis-servers; None: none.
        replicas: how many replicas follow the primary.
        min_replicas_to_write: each server's `min-replicas-to-write` (and a short
            `min-replicas-max-lag`, MIN_REPLICAS_MAX_LAG_S): a primary with fewer replicas in
            sync refuses writes with NOREPLICAS. 0: off, Redis's default.

    Yields:
        The cluster, once every replica is in sync and every sentinel sees them all.

    Raises:
        StackError: when a process does not start or the deployment does not form in time.
    """
    for attempt in range(PORT_ATTEMPTS):
        with ExitStack() as stack:
            try:
                cluster = _start_cluster(
                    stack, workdir, master, password, replicas, min_replicas_to_write
                )
            except PortTaken:  # the block stopped what had started: again on fresh ports
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                continue
            yield cluster
            return


def _start_cluster(
    stack: ExitStack,
    workdir: Path,
    master: str,
    password: str | None,
    replicas: int,
    min_replicas_to_write: int,
) -> SentinelCluster:
    """Start the deployment on fresh ports, each process stopped when stack closes.

    Raises:
        PortTaken: when a process exits because another took its port since it was picked.
    """
    ports = free_ports(1 + replicas + 3)
    ports, sentinel_ports = ports[: 1 + replicas], ports[1 + replicas :]
    servers: dict[int, subprocess.Popen[bytes]] = {}
    log_since: dict[int, int] = {}

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        home = workdir / name
        home.mkdir(parents=True, exist_ok=True)
        log_since[int(name.rsplit("-", 1)[1])] = _log_size(home / "log")
        # Appends: a server started again keeps the log of its first life.
        proc, log = _spawn(argv, home / "log", cwd=home)
        stack.callback(log.close)
        # A killed server is reaped at once; _kill_group after _stop reaps any other.
        stack.callback(_stop, proc, proc.pid, REDIS_STOP_GRACE_S)
        return proc

    for n, port in enumerate(ports):
        home = workdir / f"redis-{port}"
        primary = None if n == 0 else ports[0]
        argv = _server_argv(port, home, password, primary, min_replicas_to_write)
        servers[port] = start(f"redis-{port}", argv)
    cluster = SentinelCluster(master, servers, sentinel_ports, password, min_replicas_to_write,
                              _respawn=lambda port, argv: start(f"redis-{port}", argv),
                              _workdir=workdir)  # fmt: skip

    def wait(
        name: str, kind: str, procs: dict[int, subprocess.Popen[bytes]], auth: str | None,
        joined: Callable[[int], bool], timeout_s: float, interval_s: float,
    ) -> None:  # fmt: skip
        def until(ready: Callable[[], bool], port: int, limit_s: float) -> None:
            _wait_until(ready, procs[port], f"{kind} on port {port}",
                        workdir / f"{name}-{port}" / "log", limit_s, interval_s=interval_s,
                        log_since=log_since[port])  # fmt: skip

        # Each answers as itself first (not another process that took its port: then it
        # exits, PortTaken), all of them before any is waited for to join the others: a wait
        # for one to see the rest must not outlast a sibling that died for its port.
        for port, proc in procs.items():
            until(partial(_owned_by, port, proc.pid, auth), port, REDIS_STARTUP_TIMEOUT_S)
        for port in procs:
            until(partial(joined, port), port, timeout_s)

    wait("redis", "redis-server", servers, password, partial(_serving, cluster),
         REDIS_STARTUP_TIMEOUT_S, 0.05)  # fmt: skip
    sentinels = {}
    for port in sentinel_ports:
        home = workdir / f"sentinel-{port}"
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "sentinel.conf"  # a sentinel rewrites its config: it must own it
        conf.write_text(_sentinel_conf(port, home, master, ports[0], password))
        sentinels[port] = start(f"sentinel-{port}", [_redis_binary(), str(conf), "--sentinel"])
    sees_everyone = partial(_sees_everyone, cluster, replicas=replicas)
    # They find each other through the primary.
    wait("sentinel", "redis-sentinel", sentinels, None, sees_everyone,
         REDIS_STARTUP_TIMEOUT_S * 2, 0.1)  # fmt: skip
    return cluster


def _serving(cluster: SentinelCluster, port: int) -> bool:
    """The server is the primary, or a replica in sync with it."""
    return cluster.answers_as_primary(port) or _in_sync(cluster, port)


def _in_sync(cluster: SentinelCluster, port: int) -> bool:
    client = cluster.server(port)
    try:
        role = client.execute_command("ROLE")
        return bool(role[0] == b"slave" and role[3] == b"connected")
    except redis.RedisError:
        return False
    finally:
        client.close()


def _without_replicas(cluster: SentinelCluster, primary: int) -> bool:
    """The primary counts no replica: none connected, none in sync enough to take writes."""
    client = cluster.server(primary)
    try:
        info = client.info("replication")
        return int(info.get("connected_slaves", 0)) == 0 and not info.get("min_slaves_good_slaves")
    except redis.RedisError:
        return False
    finally:
        client.close()


def _sees_everyone(cluster: SentinelCluster, port: int, replicas: int) -> bool:
    """The sentinel knows the primary, every replica and the other sentinels."""
    client = cluster._sentinel(port)
    try:
        info = client.sentinel_master(cluster.master)
        if not isinstance(info, dict):
            return False
        return (
            int(info.get("num-slaves", 0)) >= replicas
            and int(info.get("num-other-sentinels", 0)) >= len(cluster.sentinel_ports) - 1
        )
    except redis.RedisError:
        return False
    finally:
        client.close()
