"""Fixtures of the HTTP API's tests: `videoqueue serve` as a subprocess over a test's pipeline
(Redis, SeaweedFS, the sandbox, celery workers), with keys of its tenants."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.stack import http_service
from producer.core.keys import create_key
from tests.e2e.conftest import Pipeline

# Signs video.url in these tests, so that a client fetches it without its key.
URL_SECRET = "test-url-secret-not-a-real-one"


@dataclass
class Gateway:
    """A running `videoqueue serve` over a pipeline."""

    url: str
    pipeline: Pipeline
    env: dict[str, str]
    logfile: Path
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, tenant: str, *, admin: bool = False) -> str:
        """A new key of tenant (remembered under the tenant's name)."""
        _, secret = create_key(tenant, admin=admin, settings=self.pipeline.settings)
        self.keys[tenant] = secret
        return secret

    def client(self, tenant: str) -> httpx.Client:
        """A plain HTTP client with tenant's key (one is made on first use)."""
        secret = self.keys.get(tenant) or self.key(tenant)
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {secret}"}, timeout=15
        )


@pytest.fixture
def make_gateway(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> Iterator[Callable[..., Gateway]]:
    """`make_gateway(workers=1, env={...}, sandbox={...})`: a pipeline and a served gateway."""
    with ExitStack() as stack:

        def make(workers: int = 1, env: dict[str, str] | None = None, **pipeline: Any) -> Gateway:
            p = make_pipeline(workers=workers, env=env, **pipeline)
            full_env = {**p.env, "VIDEOQUEUE_HTTP_URL_SECRET": URL_SECRET, **(env or {})}
            logfile = tmp_path / f"http-{time.monotonic_ns()}.log"
            url = stack.enter_context(http_service(full_env, logfile=logfile))
            return Gateway(url, p, full_env, logfile)

        yield make


def wait_video(client: httpx.Client, video_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """GET the video until it is completed or failed (OpenAI's words)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client.get(f"/v1/videos/{video_id}")
        assert answer.status_code == 200, answer.text
        video: dict[str, Any] = answer.json()
        if video["status"] in ("completed", "failed"):
            return video
        assert time.monotonic() < deadline, f"{video_id} still {video['status']}"
        time.sleep(0.1)
