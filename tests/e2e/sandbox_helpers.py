"""Helpers for the sandbox's own tests: a served sandbox with an httpx client, and MP4 probing."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import av
import httpx

from ops.sandbox import Sandbox, SandboxConfig

API_KEY = "sk-sandbox-test"
OTHER_KEY = "sk-sandbox-other"


@contextmanager
def running(**knobs: Any) -> Iterator[tuple[Sandbox, httpx.Client]]:
    """A served sandbox (fast, seeded, router flavor unless told) and a client with its key."""
    config = {"api_key": API_KEY, "extra_api_keys": [OTHER_KEY], "fast": True, "seed": 1}
    config.update(knobs)
    sb = Sandbox(SandboxConfig(**config))
    try:
        with (
            sb.serve() as url,
            httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
            ) as client,
        ):
            yield sb, client
    finally:
        sb.close()


def create(client: httpx.Client, path: str = "/v1/videos", **body: Any) -> dict[str, Any]:
    """POST a create (a small clip unless told) and return the answer, which must be 200."""
    payload: dict[str, Any] = {"model": "sora", "prompt": "a cat", "size": "64x48", "duration": 2}
    payload.update(body)
    response = client.post(path, json={k: v for k, v in payload.items() if v is not None})
    assert response.status_code == 200, response.text
    return response.json()


def wait_terminal(
    client: httpx.Client, task_id: str, path: str | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Poll a task until it is completed or failed (in any vocabulary)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(path or f"/v1/videos/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"].lower() in {"completed", "succeeded", "failed"}:
            return body
        assert time.monotonic() < deadline, f"{task_id} still {body['status']}"
        time.sleep(0.02)


def probe(data: bytes) -> tuple[int, int, float]:
    """(width, height, duration in seconds) of an MP4, as PyAV reads it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height, container.duration / 1e6


def raw_get(
    url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """GET url on a bare socket and read until the server closes: what is really on the wire.

    An HTTP client stops reading at Content-Length; this does not, so it sees the bytes past a
    Content-Length that lies.

    Returns:
        (status, headers with lower-case names, every byte after the header block).
    """
    target = httpx.URL(url)
    lines = [f"GET {target.raw_path.decode()} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{k}: {v}" for k, v in {"Connection": "close", **(headers or {})}.items()]
    data = bytearray()
    with socket.create_connection((target.host, target.port or 80), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), parsed, body
