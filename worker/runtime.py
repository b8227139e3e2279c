"""What a worker process keeps between tasks: settings, clients and connection pools.

Built lazily on first use, so each prefork child makes its own connections after the fork.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx
import structlog

from producer.core.callbacks import CallbackTokens
from producer.core.errors import PermanentError
from producer.core.limits import ProviderLimits
from producer.core.providers import providers
from producer.core.settings import Settings, get_settings
from producer.core.store import JobStore, store
from worker.egress import GuardedTransport
from worker.history import CallbackLoss, GenerationTimes
from worker.inputs import BucketImages
from worker.provider import ProviderClient, client_for
from worker.pump import Pump
from worker.retries import Retries
from worker.storage import ensure_bucket, s3_client
from worker.uploads import ensure_abort_rule, key_prefix, sweep_if_due

log = structlog.get_logger("videoqueue.worker")


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def store(self) -> JobStore:
        return store(self.settings)

    @cached_property
    def http(self) -> httpx.Client:
        """One pooled client for the API, file downloads and webhooks; every connection but
        the API's own goes through the outbound URL policy (worker/egress.py)."""
        return httpx.Client(
            timeout=httpx.Timeout(
                self.settings.api_timeout_s, connect=self.settings.api_connect_timeout_s
            ),
            follow_redirects=False,
            transport=GuardedTransport(
                self.settings.url_policy,
                trusted=[p.base_url for p in providers(self.settings)],
                limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
            ),
        )

    @cached_property
    def providers(self) -> dict[str, ProviderClient]:
        """A client per provider (producer/core/providers.py), by name, in order of preference."""
        return {p.name: client_for(self.settings, p, self.http) for p in providers(self.settings)}

    def provider(self, name: str | None) -> ProviderClient:
        """The named provider's client (None: the first, for records from before providers
        had names).

        Raises:
            PermanentError: code "unknown_provider", the provider is no longer configured.
        """
        if name is None:
            return next(iter(self.providers.values()))
        try:
            return self.providers[name]
        except KeyError:
            raise PermanentError(
                f"provider {name!r} is no longer configured", code="unknown_provider"
            ) from None

    @cached_property
    def retries(self) -> Retries:
        """When each step tries again, and when it gives up (worker/retries.py)."""
        return Retries(self.settings)

    @cached_property
    def pump(self) -> Pump:
        return Pump(self.store.redis, self.settings)

    @cached_property
    def pool(self) -> ThreadPoolExecutor:
        """Threads for a poll batch's status queries, which go out at once."""
        _fewer_malloc_arenas()
        return ThreadPoolExecutor(max_workers=8, thread_name_prefix="videoqueue-poll")

    @cached_property
    def history(self) -> GenerationTimes:
        return GenerationTimes(self.store.redis, self.store.keys)

    @cached_property
    def callbacks(self) -> CallbackTokens:
        """The per-job callback tokens (producer/core/callbacks.py)."""
        return CallbackTokens(self.store.redis, self.store.keys)

    @cached_property
    def callback_loss(self) -> CallbackLoss:
        return CallbackLoss(self.store.redis, self.store.keys)

    @cached_property
    def limits(self) -> ProviderLimits:
        return ProviderLimits(self.store.redis, self.settings)

    @cached_property
    def s3(self) -> Any:
        client = s3_client(self.settings)
        ensure_bucket(client, self.settings.s3_bucket)
        ensure_abort_rule(
            client, self.settings.s3_bucket, key_prefix(self.settings.s3_key_template)
        )
        return client

    @cached_property
    def images(self) -> BucketImages:
        """Requests' stored reference images (worker/inputs.py)."""
        return BucketImages(lambda: self.s3, self.settings)

    def replicate(self) -> None:
        """Hold a write that guards money (a job pinned to a provider before its create)
        until VIDEOQUEUE_REDIS_WAIT_REPLICAS replicas have it, so that a failover cannot
        lose it and let the create be sent again without its pin. Past
        VIDEOQUEUE_REDIS_WAIT_TIMEOUT_MS the step goes on and says so: stalling every
        submit while a replica is away would trade an outage for a rare double create."""
        wanted = self.settings.redis_wait_replicas
        if wanted <= 0:
            return
        got = self.store.wait_for_replicas(wanted, self.settings.redis_wait_timeout_ms)
        if got < wanted:
            log.warning("write not replicated in time", replicas=got, wanted=wanted,
                        timeout_ms=self.settings.redis_wait_timeout_ms)  # fmt: skip

    def sweep_uploads(self) -> None:
        """Abort orphaned multipart uploads and delete stale reference images, if no worker
        did lately (worker/uploads.py)."""
        sweep_if_due(self.s3, self.store.redis, self.store.keys.upload_sweep(), self.settings)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def _fewer_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
    each keeps the memory it once held: with a poll batch's threads in every pool process
    that tripled the worker's RSS (bench/results). Two arenas serve these I/O-bound threads
    as well (the same as MALLOC_ARENA_MAX=2). Not glibc: nothing to do."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
