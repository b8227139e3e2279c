"""Real services for end-to-end tests: one Redis and one SeaweedFS per session; a sandbox
provider, a webhook receiver and `celery worker` processes per test, each test under its
own key prefix and queue so that nothing leaks between tests."""

from __future__ import annotations

import base64
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ops.receiver import WebhookReceiver
from ops.sandbox import Sandbox, SandboxConfig
from ops.stack import S3Service, WorkerProcess, celery_worker, ensure_redis, seaweedfs
from producer.core.settings import Settings

# Fixed, not random: test modules import these.
API_KEY = "sk-test-4c0ffee5ecret"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"videoqueue-test-webhook-secret!!").decode()
BUCKET = "videoqueue-tests"
# Every key prefix of this test process starts with this, so that its end-of-session sweep
# removes its own leftovers only: another run against the same Redis (a second checkout, CI)
# and the other pytest-xdist workers of this run keep their keys.
RUN_PREFIX = (
    f"vqtest-{os.environ.setdefault('VQTEST_RUN', uuid.uuid4().hex[:6])}"
    f"-{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}-"
)


def fresh_prefix() -> str:
    """A fresh key prefix (and queue name) for one test's deployment."""
    return f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}"


# Fast timings so that a test's job ends in seconds; the same code paths as production.
FAST = {
    "VIDEOQUEUE_POLL_FIRST_S": "0.2",
    "VIDEOQUEUE_POLL_CAP_S": "1",
    "VIDEOQUEUE_RETRY_BASE_S": "0.2",
    "VIDEOQUEUE_RETRY_CAP_S": "1",
    "VIDEOQUEUE_WEBHOOK_SCHEDULE_S": "[0, 0.3, 0.6, 1.0]",
    "VIDEOQUEUE_API_TIMEOUT_S": "3",
    "VIDEOQUEUE_DOWNLOAD_TIMEOUT_S": "5",
    "VIDEOQUEUE_VISIBILITY_TIMEOUT_S": "120",
    # The receiver and the sandbox's file hosts are on loopback, which the outbound URL
    # policy refuses unless told.
    "VIDEOQUEUE_URL_ALLOWLIST": "127.0.0.0/8,localhost",
}


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with ensure_redis(
        os.environ.get("VIDEOQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    ) as url:
        yield url
        _forget_test_keys(url)


def _forget_test_keys(url: str) -> None:
    """Leave the Redis as it was found. kombu keeps every queue's unacknowledged messages in
    one global hash, and a later test's worker restores a killed worker's messages into the
    killed test's queue after that test has cleaned up: so sweep once more at the end."""
    client = redis.Redis.from_url(url)
    # kombu also names its exchange bindings after each queue (a test's prefix).
    for pattern in (f"{RUN_PREFIX}*", f"_kombu.binding*.{RUN_PREFIX}*"):
        for key in client.scan_iter(pattern):
            client.delete(key)
    for tag, raw in client.hgetall("unacked").items():
        if f'"{RUN_PREFIX}'.encode() in raw:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.close()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as service:
        service.ensure_bucket(BUCKET)
        yield service


@pytest.fixture
def s3_client(s3: S3Service) -> Iterator[Any]:
    client = s3.client()
    yield client
    client.close()


@dataclass
class Pipeline:
    """One test's videoqueue deployment: settings shared by producer and workers."""

    env: dict[str, str]
    settings: Settings
    sandbox: Sandbox
    receiver: WebhookReceiver
    start_worker: Callable[..., WorkerProcess]
    workers: list[WorkerProcess] = field(default_factory=list)

    def served_bytes(self, provider_task_id: str) -> bytes:
        """The sandbox's bytes of a task (its content route), to compare with what S3 holds."""
        return httpx.get(
            f"{self.settings.api_base_url}/v1/videos/{provider_task_id}/content",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).content

    def request(self, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"model": "sora", "prompt": "a cat playing piano",
                                "size": "64x48", "duration": 2}  # fmt: skip
        if self.receiver.url:
            base["webhook_url"] = self.receiver.url
        base.update(fields)
        return base


@pytest.fixture
def make_pipeline(
    redis_url: str, s3: S3Service, tmp_path: Path
) -> Iterator[Callable[..., Pipeline]]:
    """Build a deployment: `make_pipeline(sandbox={...knobs}, env={...}, workers=1)`."""
    prefix = fresh_prefix()
    with ExitStack() as stack:

        def make(
            sandbox: dict[str, Any] | None = None,
            env: dict[str, str] | None = None,
            workers: int = 1,
            concurrency: int = 2,
        ) -> Pipeline:
            knobs = {"flavor": "router", "api_key": API_KEY, "fast": True, "seed": 1}
            knobs.update(sandbox or {})
            sb = Sandbox(SandboxConfig(**knobs))
            api_url = stack.enter_context(sb.serve(host="127.0.0.1", port=0))
            receiver = WebhookReceiver(WEBHOOK_SECRET)
            stack.enter_context(receiver.serve())
            full_env = {
                "VIDEOQUEUE_BROKER_URL": redis_url,
                "VIDEOQUEUE_KEY_PREFIX": prefix,
                "VIDEOQUEUE_QUEUE": prefix,
                "VIDEOQUEUE_API_BASE_URL": api_url,
                "VIDEOQUEUE_API_KEY": API_KEY,
                "VIDEOQUEUE_S3_BUCKET": BUCKET,
                "VIDEOQUEUE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                **s3.env(),
                **FAST,
                **(env or {}),
            }
            settings = Settings(**{
                k.removeprefix("VIDEOQUEUE_").lower(): v
                for k, v in full_env.items() if k.startswith("VIDEOQUEUE_")
            })  # fmt: skip

            def start_worker(**kwargs: Any) -> WorkerProcess:
                kwargs.setdefault("concurrency", concurrency)
                kwargs.setdefault("logfile", tmp_path / f"worker-{len(pipeline.workers)}.log")
                w = stack.enter_context(celery_worker(full_env, **kwargs))
                pipeline.workers.append(w)
                return w

            pipeline = Pipeline(full_env, settings, sb, receiver, start_worker)
            for _ in range(workers):
                start_worker()
            return pipeline

        yield make
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def eventually(check: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
    """Return check()'s first truthy value, or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(every_s)


@pytest.fixture
def alone_among_the_heavy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run the test while no other test holding this fixture runs, on any xdist worker.

    The chaos smoke run and a failover under load each start dozens of processes and hold
    Redis busy; on a 2-core host, run side by side, each starves the other past the recovery
    goal it asserts (30 s after a failover), which is a figure about videoqueue, not about
    the host's load. A lock file in the session's shared temp directory orders them.
    """
    shared = tmp_path_factory.getbasetemp().parent  # popen-gwN's parent: one per session
    with open(shared / "heavy-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def bare_settings(redis_url: str) -> Iterator[Settings]:
    """Settings of a deployment of its own (a fresh key prefix) on the session's Redis, with
    no worker, sandbox or receiver: for what the producer and Redis do alone. Its keys are
    removed afterwards."""
    prefix = fresh_prefix()
    yield Settings(key_prefix=prefix, queue=prefix, broker_url=redis_url)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that gives a `videoqueue` process bare_settings' deployment."""
    return {
        "VIDEOQUEUE_BROKER_URL": settings.broker_url,
        "VIDEOQUEUE_KEY_PREFIX": settings.key_prefix,
        "VIDEOQUEUE_QUEUE": settings.queue,
    }
