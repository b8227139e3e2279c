"""The producer's verbs: enqueue a job, read it, wait for it, cancel it."""

from __future__ import annotations

import time
import uuid
from typing import Any

from producer.core.errors import WaitTimeout
from producer.core.providers import candidates
from producer.core.records import TERMINAL, JobRecord, mark_cancelled
from producer.core.requests import VideoRequest, parse_request
from producer.core.settings import Settings, get_settings
from producer.core.store import store
from producer.core.urls import check_outbound


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def new_record(request: VideoRequest, settings: Settings, **fields: Any) -> JobRecord:
    """A fresh job record for a validated request."""
    return JobRecord(
        id=new_job_id(),
        request=request.model_dump(mode="json", exclude_none=True),
        metadata=request.metadata,
        api_format=(request.api_format or settings.api_format).value,
        **fields,
    )


def enqueue(request: VideoRequest | dict[str, Any], *, settings: Settings | None = None) -> str:
    """Validate a generation request and queue it.

    Args:
        request: a VideoRequest or the JSON-shaped dict (see README, "The request").
        settings: defaults to the environment's.

    Returns:
        The job id. With an idempotency_key that an earlier job holds, that job's id:
        the request is not queued twice.

    Raises:
        InvalidRequest: naming the bad field; nothing was written.
    """
    s = settings or get_settings()
    req = parse_request(request)
    check_outbound(req.webhook_url, "webhook_url", s.url_policy)
    candidates(req, s)  # a provider that can take it (and the one it names exists)
    record = new_record(req, s)
    return store(s).create(record, req.idempotency_key)


def get(job_id: str, *, settings: Settings | None = None) -> JobRecord:
    """The job's current record. Its `public()` is the public job object (the README's
    "The job record"); the fields only a JobRecord has are the scheduler's, not a contract.

    Raises:
        JobNotFound: when no job has that id.
    """
    return store(settings).get(job_id)


def wait(job_id: str, timeout: float = 600.0, *, settings: Settings | None = None) -> JobRecord:
    """Block until the job ends (completed, failed or cancelled) and return its record.

    Meant for scripts and the CLI; services should take the webhook instead.

    Raises:
        JobNotFound: when no job has that id.
        WaitTimeout: when it has not ended within timeout seconds.
    """
    st = store(settings)
    deadline = time.monotonic() + timeout
    pubsub = st.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(st.keys.events(job_id))
    try:
        while True:
            record = st.get(job_id)
            if record.status in TERMINAL:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"job {job_id} still {record.status.value} after {timeout:g} s")
            # A change is announced on the job's channel; the timeout bounds a missed one.
            pubsub.get_message(timeout=min(remaining, 1.0))
    finally:
        pubsub.close()


def cancel(job_id: str, *, settings: Settings | None = None) -> JobRecord:
    """Cancel a job that has not ended.

    A job not yet submitted never will be. One already at the provider is cancelled there
    (DELETE /v1/videos/{id}) by its next poll where the provider allows it, and is no longer
    tracked; no webhook is sent for a cancelled job.

    Raises:
        JobNotFound: when no job has that id.
    """
    st = store(settings)
    return st.update(job_id, mark_cancelled, after=lambda r, pipe: st.schedule.nudge(r.id, pipe))
