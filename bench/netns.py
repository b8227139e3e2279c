"""A redis-server in a network namespace of its own, which the chaos suite can cut off from
every process on the host (the workers, the producer) and join again: a silent network
partition made by the kernel, not by a proxy in this process.

The namespace is joined to the host by one veth pair on a private /30 (10.231.x.y), so the
traffic never leaves the machine. A partition puts the ``blackhole`` queueing discipline on
both ends of the pair: every packet is dropped, the links stay up, no reset or ICMP is sent
(what a switch dying between two racks looks like). The heal removes it; connections that
lived through the partition carry on once TCP retransmits.

Needs root (CAP_NET_ADMIN) and ``ip``/``tc``; :func:`netns_supported` says whether they work.
Where they do not, :func:`partitionable_redis` puts the suite's TCP proxy (bench/faults.py) in
front of a loopback redis-server instead: the same silence, made in this process, and the
heal resets the connections that lived through it.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Protocol

from bench.faults import Mode, TcpProxy
from ops.serve import free_port
from ops.stack import (
    REDIS_STARTUP_TIMEOUT_S,
    REDIS_STOP_GRACE_S,
    StackError,
    _pings,
    _redis_binary,
    _spawn,
    _stop,
    _wait_until,
    redis_server,
)

__all__ = [
    "NetnsRedis",
    "PartitionableRedis",
    "ProxiedRedis",
    "netns_redis",
    "netns_supported",
    "partitionable_redis",
]

_serial = count()
_lock = threading.Lock()


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"{' '.join(args)}: {done.stderr.strip()}")


def netns_supported() -> bool:
    """Whether this process may make a namespace, a veth pair and a blackhole qdisc."""
    try:
        with _link():
            return True
    except (StackError, OSError):
        return False


@dataclass
class _Link:
    netns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str


@contextmanager
def _link() -> Iterator[_Link]:
    """A namespace joined to the host by a veth pair, both ends up; removed afterwards."""
    with _lock:
        n = next(_serial)
    # Names unique per process and call (interface names are at most 15 characters).
    tag = f"{os.getpid() % 100_000}x{n}"
    subnet = (os.getpid() * 7 + n * 4) % 16_384 * 4  # a /30 inside 10.231.0.0/16
    base = f"10.231.{subnet // 256}."
    link = _Link(f"vqchaos-{tag}", f"vqh{tag}", f"vqn{tag}", f"{base}{subnet % 256 + 1}",
                 f"{base}{subnet % 256 + 2}")  # fmt: skip
    with ExitStack() as undo:
        _ip("ip", "netns", "add", link.netns)
        undo.callback(_ip, "ip", "netns", "del", link.netns)
        _ip("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
        undo.callback(_ip, "ip", "link", "del", link.host_if)
        _ip("ip", "link", "set", link.ns_if, "netns", link.netns)
        _ip("ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        _ip("ip", "link", "set", link.host_if, "up")
        _ip("ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if, netns=link.netns)
        _ip("ip", "link", "set", link.ns_if, "up", netns=link.netns)
        _ip("ip", "link", "set", "lo", "up", netns=link.netns)
        # A partition that works, tried once: the heal must work too.
        _blackhole(link, on=True)
        _blackhole(link, on=False)
        yield link


def _blackhole(link: _Link, *, on: bool) -> None:
    verb = ["add", "root", "blackhole"] if on else ["del", "root"]
    _ip("tc", "qdisc", *verb[:1], "dev", link.host_if, *verb[1:])
    _ip("tc", "qdisc", *verb[:1], "dev", link.ns_if, *verb[1:], netns=link.netns)


@dataclass
class NetnsRedis:
    """A redis-server reachable at url only across the namespace's veth pair."""

    url: str
    link: _Link
    partitioned: bool = False

    def partition(self) -> None:
        """Drop every packet between the host and the server, both ways, silently."""
        _blackhole(self.link, on=True)
        self.partitioned = True

    def heal(self) -> None:
        """Let the packets through again."""
        if self.partitioned:
            _blackhole(self.link, on=False)
            self.partitioned = False


@contextmanager
def netns_redis(workdir: Path, appendfsync: str | None = "everysec") -> Iterator[NetnsRedis]:
    """Run redis-server (AOF as ops.stack.redis_server runs it) in a namespace of its own.

    Raises:
        StackError: when the namespace cannot be made or the server does not answer.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with _link() as link, ExitStack() as stack:
        port = free_port()  # free on the host; the namespace's ports are all free
        argv = [
            "ip", "netns", "exec", link.netns, _redis_binary(), "--port", str(port),
            "--bind", link.ns_ip, "--protected-mode", "no", "--dir", str(workdir),
            "--save", "", "--appendonly", "yes" if appendfsync else "no",
            "--appendfsync", appendfsync or "everysec", "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
        ]  # fmt: skip
        proc, log = _spawn(argv, workdir / "redis.log", cwd=workdir)
        stack.callback(log.close)
        stack.callback(_stop, proc, proc.pid, REDIS_STOP_GRACE_S)
        server = NetnsRedis(f"redis://{link.ns_ip}:{port}/0", link)
        stack.callback(server.heal)  # a block that raised mid-partition still stops cleanly
        _wait_until(lambda: _pings(server.url), proc, f"redis-server in {link.netns}",
                    workdir / "redis.log", REDIS_STARTUP_TIMEOUT_S, interval_s=0.05)  # fmt: skip
        yield server


class PartitionableRedis(Protocol):
    """A Redis the chaos suite can cut off from every process on the host, and join again."""

    url: str

    def partition(self) -> None: ...

    def heal(self) -> None: ...


@dataclass
class ProxiedRedis:
    """A loopback redis-server reached through a TCP proxy that can blackhole its traffic."""

    url: str
    proxy: TcpProxy

    def partition(self) -> None:
        """Swallow every byte both ways; connections stay open and silent."""
        self.proxy.set_mode(Mode.BLACKHOLE)

    def heal(self) -> None:
        """Forward again (the connections that lived through the partition are reset)."""
        self.proxy.set_mode(Mode.PASS)


@contextmanager
def partitionable_redis(
    workdir: Path, appendfsync: str | None = "everysec"
) -> Iterator[PartitionableRedis]:
    """A redis-server in a namespace of its own where the machine allows it, else behind
    the TCP proxy."""
    if netns_supported():
        with netns_redis(workdir, appendfsync) as server:
            yield server
        return
    with redis_server(workdir=workdir, appendfsync=appendfsync) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        proxy = TcpProxy(("127.0.0.1", port))
        try:
            yield ProxiedRedis(f"redis://127.0.0.1:{proxy.port}/0", proxy)
        finally:
            proxy.close()
