"""Settings -> Celery configuration, with the reasons behind each choice."""

from __future__ import annotations

from typing import Any

from kombu import Queue

from producer.errors import VideoqueueError
from producer.names import bulk_queue
from producer.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings.

    Raises:
        VideoqueueError: when max_countdown_s is not well below visibility_timeout_s.
    """
    # On the Redis broker a message that is delivered but not acknowledged within
    # visibility_timeout_s is handed out again. A countdown (an ETA task held by a worker)
    # is unacknowledged the whole time it waits, so a countdown near the visibility timeout
    # would be redelivered while the first copy still waits: every wait we schedule is
    # capped at max_countdown_s, and this keeps that cap at most half the timeout, leaving
    # the other half for the task's own run time (acks_late counts it too).
    if settings.max_countdown_s * 2 > settings.visibility_timeout_s:
        raise VideoqueueError(
            f"max_countdown_s ({settings.max_countdown_s:g}) must be at most half of "
            f"visibility_timeout_s ({settings.visibility_timeout_s}): an ETA task held "
            "longer than the visibility timeout is redelivered"
        )
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
