"""videoqueue's producer: what a backend imports to queue video generation jobs.

    from producer import enqueue, wait
    job_id = enqueue({"model": "sora", "prompt": "a cat playing piano", "size": "1280x720"})
    record = wait(job_id, timeout=600)

It loads no Celery task code and no boto3: jobs reach the workers through Redis by name.
"""

from producer.batches import cancel_batch, enqueue_batch, get_batch
from producer.core.errors import (
    BudgetExceeded,
    InvalidRequest,
    JobNotFound,
    NotEnoughReplicas,
    VideoqueueError,
    WaitTimeout,
    WebhookVerificationError,
)
from producer.core.records import BatchRecord, JobRecord, JobStatus
from producer.core.requests import CharacterRequest, Scene, VideoRequest
from producer.jobs import cancel, enqueue, get, wait
from producer.webhooks import verify_webhook

__all__ = [
    "BatchRecord",
    "BudgetExceeded",
    "CharacterRequest",
    "InvalidRequest",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "NotEnoughReplicas",
    "Scene",
    "VideoRequest",
    "VideoqueueError",
    "WaitTimeout",
    "WebhookVerificationError",
    "cancel",
    "cancel_batch",
    "enqueue",
    "enqueue_batch",
    "get",
    "get_batch",
    "verify_webhook",
    "wait",
]
