"""The producer's verbs: enqueue a job, read it, wait for it, cancel it."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from producer.core.errors import InvalidRequest, WaitTimeout
from producer.core.ledger import estimate, reserve
from producer.core.providers import candidates
from producer.core.records import TERMINAL, JobRecord, iso, mark_cancelled, schedule_fields
from producer.core.requests import VideoRequest, parse_request, unencodable_fields
from producer.core.settings import Settings, get_settings
from producer.core.store import NO_SUCH_CHARACTER, store
from producer.core.tenants import check_tenant
from producer.core.urls import check_outbound

# The most jobs one page of list_jobs holds (OpenAI's list takes up to 100 as well).
MAX_LIST_LIMIT = 100


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def new_record(request: VideoRequest, settings: Settings, **fields: Any) -> JobRecord:
    """A fresh job record for a validated request (a single job's: not in a batch)."""
    now = datetime.now(UTC)
    return JobRecord(
        id=new_job_id(),
        request=request.model_dump(mode="json", exclude_none=True),
        metadata=request.metadata,
        api_format=(request.api_format or settings.api_format).value,
        created_at=iso(now),
        updated_at=iso(now),
        **schedule_fields(request.priority, request.deadline_s, in_batch=False, now=now),
        **fields,
    )


def enqueue(
    request: VideoRequest | dict[str, Any],
    *,
    tenant: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Validate a generation request and queue it.

    Args:
        request: a VideoRequest or the JSON-shaped dict (see README, "The request").
        tenant: who the job belongs to (1-64 of letters, digits, `._-`; "default" without
            one).
        settings: defaults to the environment's.

    Returns:
        The job id. With an idempotency_key that an earlier job of the same tenant holds,
        that job's id: the request is not queued twice (another tenant's key is its own).

    Raises:
        InvalidRequest: naming the bad field; nothing was written.
        BudgetExceeded: its estimated cost would take the tenant past its budget (naming
            the budget, what was spent and what is reserved); nothing was written.
        NotEnoughReplicas: Redis refused the write, its primary having fewer replicas in
            sync than its min-replicas-to-write; nothing was written, try again later.
        redis.ConnectionError, redis.TimeoutError: Redis is unreachable.
    """
    job_id, _ = _create(request, tenant, settings)
    return job_id


def create_job(
    request: VideoRequest | dict[str, Any],
    *,
    tenant: str | None = None,
    settings: Settings | None = None,
) -> JobRecord:
    """enqueue(), answering the job itself: the new job's record as written (no second trip
    to Redis), or the earlier job that holds the request's idempotency key, as it is now.

    Raises:
        InvalidRequest, BudgetExceeded: as enqueue() does.
    """
    job_id, record = _create(request, tenant, settings)
    return record if job_id == record.id else get(job_id, settings=settings)


def _create(
    request: VideoRequest | dict[str, Any], tenant: str | None, settings: Settings | None
) -> tuple[str, JobRecord]:
    """(the id of the job that holds the request, the record made for it)."""
    s = settings or get_settings()
    req = check_request(request, tenant=tenant, settings=s)
    cost = estimate(req, s)  # its cost at the priciest provider it may go to
    record = new_record(req, s, tenant=check_tenant(tenant))
    reserve(record, cost.usd)
    return store(s).create(record, req.idempotency_key, cost), record


def check_request(
    request: VideoRequest | dict[str, Any],
    *,
    tenant: str | None = None,
    settings: Settings | None = None,
) -> VideoRequest:
    """Every check enqueue makes, writing nothing: for a caller with work to do between the
    checks and the write (the HTTP service stores an uploaded image only for a valid request).

    Raises:
        InvalidRequest: naming the bad field.
    """
    s = settings or get_settings()
    owner = check_tenant(tenant)
    req = parse_request(request)
    check_outbound(req.webhook_url, "webhook_url", s.url_policy)
    candidates(req, s)  # a provider that can take it (and the one it names exists)
    if req.characters and (foreign := store(s).foreign_characters(req.characters, owner)):
        fields = [f"characters.{k}" for k, c in enumerate(req.characters) if c in foreign]
        problems = [{"field": f, "message": NO_SUCH_CHARACTER} for f in fields]
        raise InvalidRequest(f"invalid request: {', '.join(fields)}: {NO_SUCH_CHARACTER}", problems)
    return req


def list_jobs(
    *,
    tenant: str | None,
    limit: int = 20,
    after: str | None = None,
    order: str = "desc",
    settings: Settings | None = None,
) -> tuple[list[JobRecord], bool]:
    """A page of jobs, newest first (by when they were enqueued) or oldest first.

    Args:
        tenant: whose jobs; None for every tenant's (an admin's listing).
        limit: jobs per page, 1 to MAX_LIST_LIMIT.
        after: the last job id of the previous page (that job is not repeated); None for
            the first page.
        order: "desc" (newest first) or "asc" (oldest first: jobs enqueued while paging
            come on the last pages).
        settings: defaults to the environment's.

    Returns:
        (the page, whether more jobs follow it). Jobs whose records expired are left out, and
        so are jobs created longer ago than VIDEOQUEUE_RECORD_TTL_S.

    Raises:
        InvalidRequest: naming `tenant`, `limit`, `order` or `after` (one not in this
            listing: no such job, another tenant's, or one whose record expired since).
    """
    if tenant is not None:
        tenant = check_tenant(tenant)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest.of_field("limit", f"a whole number from 1 to {MAX_LIST_LIMIT}")
    if after is not None and (not isinstance(after, str) or not after or unencodable_fields(after)):
        raise InvalidRequest.of_field("after", "a job id")
    if order not in ("asc", "desc"):
        raise InvalidRequest.of_field("order", "asc or desc")
    page = store(settings).page(tenant, after, limit, order)
    if page is None:
        raise InvalidRequest.of_field("after", "no such job in this listing")
    return page


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
