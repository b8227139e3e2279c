"""Settings -> Celery configuration, with the reasons behind each choice."""

from __future__ import annotations

from typing import Any

from kombu import Queue

from producer.names import bulk_queue
from producer.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    # On the Redis broker a message that is delivered but not acknowledged within
    # visibility_timeout_s is handed out again. A countdown (an ETA task held by a worker)
    # is unacknowledged the whole time it waits, so any countdown near the timeout would be
    # redelivered while the first copy still waits, and a SIGKILLed worker's waits would
    # come back only after it. That is why videoqueue hands the broker no countdowns at all:
    # every wait is a deferred message in Redis (worker/deferred.py). What is left for the
    # timeout to cover is a task's own run time (acks_late counts it): seconds for a poll,
    # the copy of one file for finalize. It is therefore also the recovery time for the
    # tasks a crashed worker was running.
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu sweeps for messages past the visibility timeout every interval x throttle
        # seconds (10 x 10 by default), which would add up to 100 s to the recovery time
        # after a crash; sweeping every tenth of the timeout (a single ZRANGE) keeps it near
        # visibility_timeout_s.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
    }
    return {
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
        # Batch jobs start on the bulk queue. A worker consumes both, and kombu rotates
        # between them, so a single job is picked up within seconds of a 10,000-job batch.
        "task_queues": [
            Queue(settings.queue, routing_key=settings.queue),
            Queue(bulk_queue(settings.queue), routing_key=bulk_queue(settings.queue)),
        ],
        # At-least-once: a task is acknowledged only after it ran, and one whose worker
        # process died (OOM, SIGKILL) is requeued instead of acknowledged. Every task is
        # idempotent for that reason (see tasks.py).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Each task does network I/O for seconds; prefetching more would park jobs behind it.
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }
