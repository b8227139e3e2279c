"""A total deadline for an HTTP exchange, whatever phase it is in, on pooled connections.

httpx's timeouts bound each network operation, not the exchange: a server that drips its
answer (its status line and headers included) a byte at a time stays within every one, and
holds the caller as long as it likes. Inside `within(timeout_s)`, a client whose transport is
`deadline_transport()` gives each connect, TLS handshake, read and write on this thread only
the time the exchange has left; one that would start past it times out at once. The check sits
in the network stream, which every request on a connection goes through, so a connection
taken from the pool is bounded as a new one is (no `Connection: close` needed). It raises
httpx's own timeouts (ConnectTimeout, ReadTimeout, WriteTimeout), handled as any timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

_deadline: ContextVar[float | None] = ContextVar("videoqueue_http_deadline", default=None)


class Deadline:
    """The deadline of the exchange within() guards."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at


@contextmanager
def within(timeout_s: float) -> Iterator[Deadline]:
    """Bound every exchange made inside the block, on this thread, to timeout_s in all."""
    deadline = Deadline(timeout_s)
    token = _deadline.set(deadline.at)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


def deadline_transport(**transport: Any) -> httpx.HTTPTransport:
    """An httpx.HTTPTransport (transport: its arguments) that keeps within()'s deadlines."""
    inner = httpx.HTTPTransport(**transport)
    # httpx has no argument for httpcore's network backend (httpcore's pool has one): set on
    # the pool it just made, before any connection exists.
    pool = inner._pool  # noqa: SLF001
    pool._network_backend = _Backend(pool._network_backend)  # noqa: SLF001
    return inner


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """timeout, cut to what the exchange has left (if it has a deadline)."""
    at = _deadline.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("the exchange is past its deadline")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
