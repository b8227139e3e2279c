"""Run an ASGI app on uvicorn in a background thread (the sandbox, the webhook receiver)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import uvicorn

# The sandbox's deliberate faults on the wire (a Content-Length that lies, a reset mid-body:
# ops/sandbox/gate.py) are written for h11 on asyncio's loop, not httptools, which uvicorn
# picks when it is installed (the HTTP service asks for it, in `serve`, for speed).
SANDBOX_HTTP: dict[str, Any] = {"http": "h11", "loop": "asyncio"}


def reset_on_close(sock: socket.socket) -> None:
    """Make the socket's close send RST (SO_LINGER 0): its peer sees ECONNRESET, as from a
    host that refuses it, rather than an orderly end of the stream."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on host."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct TCP ports that were free a moment ago on host."""
    ports: list[int] = []
    while len(ports) < n:  # free_port can repeat itself: keep them distinct
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


@contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 10.0
) -> Iterator[str]:
    """Serve app until the with-block ends; yields its base URL (http://host:port).

    Raises:
        RuntimeError: when the server has not started within startup_timeout_s.
    """
    port = port or free_port(host)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", access_log=False,
        **SANDBOX_HTTP,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
