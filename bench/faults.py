"""The parts the chaos suite breaks: services it can kill and start again in place, and a TCP
proxy that can refuse or blackhole the connections it carries.

Each ``Restartable`` wraps one of ops/stack.py's context managers (or a server's ``serve``)
in an ExitStack of its own, so that a service is stopped and started again on the same port
and data directory while the rest of the run goes on.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, suppress
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis

from ops.serve import reset_on_close

__all__ = ["AofTail", "Mode", "Restartable", "TcpProxy", "kill_redis"]


class Restartable:
    """A service started from a context-manager factory, which can be stopped and restarted.

    Args:
        factory: Returns a fresh context manager for the service (same port, same data).
    """

    def __init__(self, factory: Callable[[], AbstractContextManager[Any]]) -> None:
        self._factory = factory
        self._stack: ExitStack | None = None
        self.value: Any = None

    def start(self) -> Any:
        """Start the service; returns what its context manager yields."""
        stack = ExitStack()
        self.value = stack.enter_context(self._factory())
        self._stack = stack
        return self.value

    def stop(self) -> None:
        """Stop the service (its context manager's own teardown); a no-op when stopped."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    @property
    def running(self) -> bool:
        """Whether start() was called since the last stop()."""
        return self._stack is not None


def kill_redis(url: str) -> int:
    """SIGKILL the redis-server answering at url (a crash: no AOF rewrite, no final fsync).

    Returns:
        The pid killed (INFO server's process_id).
    """
    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    os.kill(pid, signal.SIGKILL)
    return pid


class Mode(StrEnum):
    """What the proxy does with connections."""

    PASS = "pass"  # forward both ways
    REFUSE = "refuse"  # new connections are reset at once, open ones too
    BLACKHOLE = "blackhole"  # bytes vanish both ways; connections stay open, silent
    # Requests reach the target, its answers vanish: the target acts, the client never
    # learns it did (a crash between a write and its acknowledgement can be staged).
    MUTE_REPLIES = "mute_replies"


_POLL_S = 0.2


class TcpProxy:
    """A loopback TCP proxy to target, in threads of this process: a network partition that
    the test switches on and off.

    Args:
        target: (host, port) to forward to.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = Mode.PASS
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="chaos-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; REFUSE and a heal from BLACKHOLE reset every open connection (a
        partition that heals leaves the peers' old connections dead, as a real one does)."""
        previous, self.mode = self.mode, mode
        if mode is Mode.REFUSE or previous is Mode.BLACKHOLE:
            with self._lock:
                for sock in list(self._open):
                    _reset(sock)

    def close(self) -> None:
        """Stop accepting and reset every connection."""
        self._closed.set()
        self._listener.close()
        self.set_mode(Mode.REFUSE)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode is Mode.REFUSE:
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        pair = (client, upstream)
        with self._lock:
            self._open.update(pair)
        try:
            self._pump(client, upstream)
        finally:
            with self._lock:
                self._open.difference_update(pair)
            for sock in pair:
                sock.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select(list(peer), [], [], _POLL_S)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self.mode is Mode.PASS or (self.mode is Mode.MUTE_REPLIES
                                                  and sock is client):  # fmt: skip
                        peer[sock].sendall(data)
                    # BLACKHOLE: read and drop, so the sender sees no error, only silence.
            except OSError:
                return


def _reset(sock: socket.socket) -> None:
    """Close with RST: the peer gets ECONNRESET, as from a refusing host."""
    reset_on_close(sock)
    with suppress(OSError):
        sock.close()


class AofTail:
    """Watches a Redis AOF's newest file, to cut off its last second as a power loss would.

    With ``appendfsync everysec`` Redis acknowledges a write before it reaches the disk; a
    killed process loses nothing (its writes sit in the page cache), a lost machine loses
    what was not yet fsynced: up to about a second. Truncating the file to its size of a
    second ago, while the server is down, is that loss. Redis loads a truncated tail
    (``aof-load-truncated yes``, the default).

    Args:
        aof_dir: The server's ``appendonlydir``.
    """

    def __init__(self, aof_dir: Path) -> None:
        self.aof_dir = aof_dir
        self._sizes: deque[tuple[float, Path, int]] = deque(maxlen=200)
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="chaos-aof", daemon=True).start()

    def _newest(self) -> Path | None:
        files = sorted(self.aof_dir.glob("*.incr.aof"), key=lambda p: p.stat().st_mtime)
        return files[-1] if files else None

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            with suppress(OSError):
                if (path := self._newest()) is not None:
                    self._sizes.append((time.monotonic(), path, path.stat().st_size))

    def cut_last(self, seconds: float) -> int:
        """Truncate the file to its size `seconds` ago (call with the server stopped).

        Returns:
            The bytes cut off.
        """
        self._stop.set()
        cutoff = time.monotonic() - seconds
        older = [(path, size) for t, path, size in self._sizes if t <= cutoff]
        if not older:
            return 0
        path, size = older[-1]
        now = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size)
        return now - size
