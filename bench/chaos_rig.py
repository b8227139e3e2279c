"""A chaos scenario's deployment, every part of which can be stopped, killed or cut off:
a private redis-server with AOF, a private SeaweedFS, the sandbox behind a TCP proxy, the
webhook receiver and two ``celery worker`` processes (bench/chaos.py runs the scenarios).

Redis comes in three kinds (:class:`RedisKind`): one redis-server on loopback, a Sentinel
deployment (a primary, two replicas, three sentinels: ops/sentinel.py), or one redis-server
in a network namespace of its own that can be partitioned from the host (bench/netns.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bench.faults import Restartable, TcpProxy
from bench.netns import PartitionableRedis, partitionable_redis
from ops.receiver import HOOK_PATH, WebhookReceiver
from ops.sandbox import Sandbox, SandboxConfig
from ops.sentinel import SentinelCluster, sentinel_cluster
from ops.serve import free_port
from ops.stack import WorkerProcess, celery_worker, redis_server, seaweedfs
from producer.core.settings import Settings

API_KEY = "sk-vqchaos-4c0ffee"
API_KEY_B = "sk-vqchaos-b-5eed"  # the second provider's, in scenarios that have one
WEBHOOK_SECRET = "whsec_dnFjaGFvcy13ZWJob29rLXNlY3JldC1rZXkhISE="
BUCKET = "vqchaos"
WORKERS = 2

# Production's code paths at a quicker pace: polls, retries and webhook attempts every few
# seconds instead of minutes, so that a 10 s fault is many attempts long; the webhook
# schedule (31 s) outlasts every fault, so a delivery that fails during one is retried after.
ENV = {
    "VIDEOQUEUE_POLL_FIRST_S": "0.5",
    "VIDEOQUEUE_POLL_CAP_S": "2",
    "VIDEOQUEUE_RETRY_BASE_S": "0.5",
    "VIDEOQUEUE_RETRY_CAP_S": "4",
    "VIDEOQUEUE_WEBHOOK_SCHEDULE_S": "[0, 1, 2, 4, 8, 16]",
    "VIDEOQUEUE_API_TIMEOUT_S": "3",
    "VIDEOQUEUE_DOWNLOAD_TIMEOUT_S": "5",
    "VIDEOQUEUE_LEASE_S": "10",
    "VIDEOQUEUE_VISIBILITY_TIMEOUT_S": "120",
    "VIDEOQUEUE_URL_ALLOWLIST": "127.0.0.0/8",
}
# A 2 s sora clip takes ~3.6 s (+-20 %): long enough that jobs are at every step at once.
SANDBOX = {"flavor": "router", "api_key": API_KEY, "seed": 7, "time_scale": 0.4}


class RedisKind(StrEnum):
    """Which Redis a rig runs."""

    LOCAL = "local"  # one redis-server on 127.0.0.1 (AOF per the scenario)
    SENTINEL = "sentinel"  # a primary, two replicas and three sentinels, no persistence
    # One redis-server (AOF) behind a veth pair that can be blackholed (the TCP proxy where
    # the machine does not allow network namespaces).
    NETNS = "netns"


@dataclass
class Rig:
    """One scenario's deployment; every part of it can be broken and healed."""

    workdir: Path
    redis: Restartable
    s3: Restartable
    receiver: WebhookReceiver
    hooks: Restartable
    hook_url: str
    sandbox: Sandbox
    sandbox_url: str
    proxy: TcpProxy
    env: dict[str, str]
    settings: Settings
    stack: ExitStack
    # Every provider by the name records give it: its sandbox, its own URL and its key.
    providers: dict[str, tuple[Sandbox, str, str]] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    # The Sentinel deployment (RedisKind.SENTINEL), or the partitionable server (NETNS).
    cluster: SentinelCluster | None = None
    netns: PartitionableRedis | None = None

    def start_worker(self) -> WorkerProcess:
        """One more ``celery worker`` (concurrency 2), stopped with the rig."""
        worker = self.stack.enter_context(
            celery_worker(
                self.env,
                concurrency=2,
                logfile=self.workdir / f"worker-{len(self.workers)}.log",
                startup_timeout_s=60,
            )
        )
        self.workers.append(worker)
        return worker


def _providers_file(path: Path, url_a: str, url_b: str) -> Path:
    """Two providers for every model: "a" (the proxied sandbox) first, then "b"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '[[providers]]\nname = "a"\ndialect = "router"\n'
        f'base_url = "{url_a}"\napi_key_env = "VQCHAOS_KEY_A"\n'
        '[[providers]]\nname = "b"\ndialect = "router"\n'
        f'base_url = "{url_b}"\napi_key_env = "VQCHAOS_KEY_B"\n'
    )
    return path


@contextmanager
def rig(
    workdir: Path,
    appendfsync: str | None,
    second_provider: bool = False,
    redis_kind: RedisKind = RedisKind.LOCAL,
) -> Iterator[Rig]:
    """Start every part of a scenario's deployment; stop all of it at the end. With
    second_provider, a providers file lists the proxied sandbox as "a" and a second sandbox
    (reached directly) as "b". redis_kind: which Redis (a Restartable all the same; what it
    yields is the URL, or the SentinelCluster / PartitionableRedis)."""
    redis_port = free_port()
    redis = Restartable(
        {
            RedisKind.LOCAL: lambda: redis_server(
                redis_port, workdir / "redis", appendfsync=appendfsync
            ),
            RedisKind.SENTINEL: lambda: sentinel_cluster(workdir / "sentinel"),
            RedisKind.NETNS: lambda: partitionable_redis(workdir / "redis", appendfsync),
        }[redis_kind]
    )
    s3 = Restartable(lambda: seaweedfs(workdir / "seaweedfs"))
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    hook_port = free_port()
    hooks = Restartable(lambda: receiver.serve(port=hook_port))
    sandbox = Sandbox(SandboxConfig(**SANDBOX))
    with ExitStack() as stack:
        started = redis.start()
        stack.callback(redis.stop)
        cluster = started if isinstance(started, SentinelCluster) else None
        netns = started if redis_kind is RedisKind.NETNS else None
        broker_url = cluster.url if cluster else netns.url if netns else started
        service = s3.start()
        stack.callback(s3.stop)
        service.ensure_bucket(BUCKET)
        hooks.start()
        stack.callback(hooks.stop)
        sandbox_url = stack.enter_context(sandbox.serve(port=0))
        stack.callback(sandbox.close)
        host, port = sandbox_url.removeprefix("http://").split(":")
        proxy = TcpProxy((host, int(port)))
        stack.callback(proxy.close)
        env = {
            "VIDEOQUEUE_BROKER_URL": broker_url,
            "VIDEOQUEUE_KEY_PREFIX": "vqchaos",
            "VIDEOQUEUE_QUEUE": "vqchaos",
            # Workers reach the provider (and its file URLs, built from the Host they asked)
            # through the proxy: a partition cuts both.
            "VIDEOQUEUE_API_BASE_URL": proxy.url,
            "VIDEOQUEUE_API_KEY": API_KEY,
            "VIDEOQUEUE_S3_BUCKET": BUCKET,
            "VIDEOQUEUE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            **service.env(),
            **ENV,
        }
        if cluster:
            env["VIDEOQUEUE_SENTINEL_MASTER"] = cluster.master
        providers = {"default": (sandbox, sandbox_url, API_KEY)}
        if second_provider:
            sandbox_b = Sandbox(SandboxConfig(**{**SANDBOX, "api_key": API_KEY_B, "seed": 8}))
            url_b = stack.enter_context(sandbox_b.serve(port=0))
            stack.callback(sandbox_b.close)
            path = _providers_file(workdir / "providers.toml", proxy.url, url_b)
            env.update({"VIDEOQUEUE_PROVIDERS_FILE": str(path),
                        "VQCHAOS_KEY_A": API_KEY, "VQCHAOS_KEY_B": API_KEY_B})  # fmt: skip
            providers = {"a": providers["default"], "b": (sandbox_b, url_b, API_KEY_B)}
        settings = Settings(**{
            k.removeprefix("VIDEOQUEUE_").lower(): v
            for k, v in env.items() if k.startswith("VIDEOQUEUE_")
        })  # fmt: skip
        the_rig = Rig(
            workdir, redis, s3, receiver, hooks, f"http://127.0.0.1:{hook_port}{HOOK_PATH}",
            sandbox, sandbox_url, proxy, env, settings, stack, providers, cluster=cluster,
            netns=netns,
        )  # fmt: skip
        for _ in range(WORKERS):
            the_rig.start_worker()
        yield the_rig
