"""Settings -> Celery configuration, with the reasons behind each choice."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from kombu import Queue

from producer.core.names import queues
from producer.core.redis_client import is_sentinel, parse_sentinel_url, sentinel_kwargs
from producer.core.settings import Settings
from worker import transport as redis_transport


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    # The broker carries hints, not state: what each job waits for is its entry in the durable
    # schedule (producer/core/schedule.py), claimed under a lease that brings a step back within
    # lease_s whatever was lost. So no Celery countdown is ever used (an ETA task is held,
    # unacknowledged, in one worker's memory until due), and the visibility timeout no
    # longer sets the recovery time: a message kombu restores after it finds its claim
    # superseded and does nothing.
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
    }
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "visibility_timeout": settings.visibility_timeout_s,
        # Job state lives in our own records; Celery's result backend would only add writes.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue,
        # Two queues a worker consumes in turn (kombu rotates between them): polls on their
        # own, so due polls never wait behind submits (which the pump hands out fairly).
        "task_queues": [Queue(q, routing_key=q) for q in queues(settings.queue)],
        # A message is acknowledged after its step ran, and every step ends by writing its
        # job's next due time, so no message is acknowledged while its job is left unplaced.
        # A step whose pool process died (OOM, SIGKILL) is not requeued: its lease brings it
        # back, and a requeue would repeat a step that kills its process without end.
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        # No hung call (a provider that never answers) holds a pool process for good; the
        # job's lease brings it back after the process is replaced.
        "task_time_limit": settings.step_timeout_s + 60,
        # Each task does network I/O for seconds; prefetching more would park work behind it
        # that another worker could have run.
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # Task events, so that Flower (and celery-exporter) see every task, sent included.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }
    if is_sentinel(settings.broker_url):
        config.update(_sentinel_broker(settings, transport))
    elif urlsplit(settings.broker_url).scheme in redis_transport.SCHEMES:
        # Reconnects after Redis went away instead of exiting (see worker/transport.py).
        config["broker_transport"] = f"{redis_transport.__name__}:Transport"
    return config


def _sentinel_broker(settings: Settings, transport: dict[str, Any]) -> dict[str, Any]:
    """The broker through Redis Sentinel: the same fixes as a plain Redis (worker/transport.py),
    every sentinel asked where the primary is, and the URL kombu sees naming one of them only
    (an address list would make kombu fail over between sentinels by swapping transports)."""
    address = parse_sentinel_url(settings.broker_url)
    host, port = address.sentinels[0]
    auth = ""
    if address.username or address.password:
        user = quote(address.username or "", safe="")
        auth = f"{user}:{quote(address.password or '', safe='')}@"
    transport.update(master_name=settings.sentinel_master,
                     sentinels=[list(s) for s in address.sentinels])  # fmt: skip
    # Given none, redis-py reaches the sentinels without a password nor a timeout.
    secret = settings.sentinel_password
    transport["sentinel_kwargs"] = sentinel_kwargs(secret.get_secret_value() if secret else None)
    return {
        "broker_url": f"sentinel://{auth}{host}:{port}/{address.db}",
        "broker_transport": f"{redis_transport.__name__}:SentinelTransport",
    }
