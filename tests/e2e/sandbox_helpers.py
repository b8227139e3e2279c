"""Helpers for the sandbox's own tests: a served sandbox with an httpx client, and MP4 probing."""

from __future__ import annotations

import io
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
