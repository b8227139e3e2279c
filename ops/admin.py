"""What an operator does by hand: list jobs, run a failed job again, replay dead webhooks.

Every change here goes through the same store transactions and schedule scripts the workers
use, so a worker running at the same moment sees either the old state or the new one.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from producer.core.errors import (
    BudgetExceeded,
    InvalidRequest,
    OperationRefused,
    PermanentError,
    RetryableError,
)
from producer.core.ledger import Estimate, estimate, new_task, reserve
from producer.core.names import BATCH_COMPLETED, Lane
from producer.core.records import (
    JobRecord,
    JobStatus,
    ReplacedTask,
    WebhookDelivery,
    WebhookState,
    schedule_fields,
    utcnow_iso,
)
from producer.core.requests import VideoRequest
from producer.core.settings import ApiFormat, Settings
from producer.core.store import store

# Index entries read per round trip while filtering a listing.
_PAGE = 500


def list_jobs(
    settings: Settings,
    *,
    status: JobStatus | None = None,
    batch_id: str | None = None,
    since_s: float | None = None,
    limit: int = 50,
    tenant: str | None = None,
) -> list[JobRecord]:
    """Jobs newest first (a batch's in request order), filtered by status, batch, creation
    time (epoch seconds) and tenant, at most limit of them. Jobs older than the records'
    retention are no longer in the index."""
    st = store(settings)
    found: list[JobRecord] = []

    def keep(records: dict[str, JobRecord | None]) -> bool:
        """Add the matching records; True once limit are found."""
        for record in records.values():
            if record is None:
                continue  # expired since it was indexed
            if status is not None and record.status is not status:
                continue
            if since_s is not None and _epoch_s(record.created_at) < since_s:
                continue
            if tenant is not None and record.tenant != tenant:
                continue
            found.append(record)
            if len(found) >= limit:
                return True
        return False

    if batch_id is not None:
        ids = st.batch_job_ids(batch_id)
        for start in range(0, len(ids), _PAGE):
            if keep(st.get_many(ids[start : start + _PAGE])):
                break
        return found
    low = since_s if since_s is not None else "-inf"
    index = st.keys.job_index() if tenant is None else st.keys.tenant_job_index(tenant)
    offset = 0
    while True:
        page = st.redis.zrevrangebyscore(index, "+inf", low, start=offset, num=_PAGE)
        if not page:
            return found
        offset += len(page)
        if keep(st.get_many([_text(m) for m in page])):
            return found


def retry_job(settings: Settings, job_id: str, *, resubmit: bool = False) -> JobRecord:
    """Run a failed job again from its last good step.

    Without resubmit the job never gets a second provider task: one the provider finished is
    copied into S3 again, one still running is polled again (its polls take a slot and rate
    tokens like every other job's), and one that never reached the provider is submitted
    (its first task). With resubmit the old task is cancelled at the provider (where its
    dialect can; else abandoned, and the record says which) and a new one is asked for
    (under a new Idempotency-Key). The job's webhook is sent again when it ends.

    Raises:
        JobNotFound: no such job.
        OperationRefused: the job has not failed, or only a new provider task can help.
    """
    from producer.core.limits import ProviderLimits
    from worker.job import route

    st = store(settings)
    record = st.get(job_id)
    if record.status is not JobStatus.FAILED:
        raise OperationRefused(
            f"job {job_id} is {record.status.value}: only a failed job can be retried"
        )
    target = JobStatus.QUEUED
    replaced: ReplacedTask | None = None
    if record.provider_task_id is not None and not resubmit:
        target = _provider_side_status(settings, record)
    elif record.provider_task_id is not None:
        replaced = _cancel_old_task(settings, record)
    cost = Estimate(0.0)
    if target is JobStatus.QUEUED:
        # (No provider takes it any more: its submit fails it, and it costs nothing.)
        with suppress(InvalidRequest):
            cost = estimate(VideoRequest.model_validate(record.request), settings)
        try:
            st.ledger.check(record.tenant, cost, f"model {record.request.get('model')!r}")
        except (BudgetExceeded, InvalidRequest) as e:
            raise OperationRefused(f"job {job_id} is not run again: {e}") from None

    def reopen(r: JobRecord) -> bool:
        if r.status is not JobStatus.FAILED:
            return False  # someone else moved it meanwhile
        r.status, r.error, r.finished_at, r.webhook = target, None, None, None
        r.copy_attempts = r.fetch_failures = r.url_refusals = r.recoveries = 0
        r.reruns += 1  # its next end is a new event: a new webhook-id and body
        reserve(r, cost.usd)
        if r.deadline_s is not None and r.past_deadline(time.time()):
            # A job past its own deadline gets a new one, as long, counted from now.
            fresh = schedule_fields(r.priority, r.deadline_s, in_batch=False, now=datetime.now(UTC))
            r.deadline_at, r.deadline_unix_s = fresh["deadline_at"], fresh["deadline_unix_s"]
        if target is JobStatus.QUEUED:
            if r.provider_task_id:  # a new task: the old one's charge stays, the new one's is new
                new_task(r)
            r.resubmits += 1 if r.provider_task_id else 0
            if replaced is not None:
                r.replaced_tasks.append(replaced)
            if r.provider_task_id:  # a new Idempotency-Key: any provider may take it
                r.provider = None
            r.provider_task_id = r.submitted_at = r.provider_status = None
            r.attempts = r.polls = 0
            r.progress = r.estimate_s = r.progress_s = r.polled_s = None
        elif _seconds_since(r.submitted_at) > settings.deadline_s:
            # A job that timed out gets a new deadline, counted from now.
            r.submitted_at, r.estimate_s, r.progress_s, r.polled_s = utcnow_iso(), None, None, None
        return True

    def after(r: JobRecord, pipe: Any) -> None:
        lane = route(r)
        st.schedule.place(r.id, lane, 0.0, client=pipe)
        if lane is Lane.POLL:  # its polls spend its provider's tokens and take a slot there
            limits = ProviderLimits(st.redis, settings)
            limits.set_route(r.id, [r.provider or limits.providers[0].name], pipe)
        st.schedule.forget_faults(r.id, pipe)
        if r.batch_id:
            st.reopen_in_batch(r.batch_id, pipe)

    return st.update(job_id, reopen, after=after)


def _cancel_old_task(settings: Settings, record: JobRecord) -> ReplacedTask:
    """Cancel the task a resubmission replaces, running or done (a done one may still be
    billed for what it keeps); best effort: one the provider cannot cancel is abandoned."""
    from worker.runtime import Runtime

    rt = Runtime(settings)
    try:
        provider = rt.provider(record.provider)
        task_id = record.provider_task_id or ""
        return ReplacedTask(provider=provider.name, task_id=task_id,
                            cancelled=provider.cancel(task_id))  # fmt: skip
    except PermanentError:  # its provider is no longer configured: nobody to ask
        return ReplacedTask(provider=record.provider or "", task_id=record.provider_task_id or "",
                            cancelled=False)  # fmt: skip
    finally:
        rt.http.close()


def _provider_side_status(settings: Settings, record: JobRecord) -> JobStatus:
    """Where a failed job that has a provider task picks up again, by what the provider says."""
    from worker.provider import TaskState
    from worker.runtime import Runtime

    rt = Runtime(settings)
    try:
        provider = rt.provider(record.provider)
        asked = record.request.get("api_format") or record.api_format
        api_format = ApiFormat(asked or provider.api_format)
        task = provider.get(record.provider_task_id or "", api_format)
    except PermanentError as e:
        raise OperationRefused(
            f"the provider refused to say how task {record.provider_task_id} is doing "
            f"({e.code}): use --resubmit for a new task"
        ) from None
    except RetryableError as e:
        raise OperationRefused(f"the provider did not answer ({e.code}): try again") from None
    finally:
        rt.http.close()
    if task.state is TaskState.FAILED:
        raise OperationRefused(
            f"the provider's task {record.provider_task_id} failed "
            f"({task.error_code or task.raw_status}): use --resubmit for a new task"
        )
    if task.state is TaskState.DONE:
        return JobStatus.FINALIZING  # copy it again
    return JobStatus.PROCESSING if task.state is TaskState.RUNNING else JobStatus.SUBMITTED


def dead_webhooks(settings: Settings) -> list[dict[str, Any]]:
    """Every dead-lettered webhook: its webhook-id, owner (job or batch), URL and last error."""
    st = store(settings)
    entries = st.redis.hgetall(st.keys.dead_letters())
    return sorted(
        ({"id": _text(k), **json.loads(v)} for k, v in entries.items()),
        key=lambda e: str(e.get("last_attempt_at") or ""),
    )


def replay_webhooks(settings: Settings, ids: list[str] | None) -> list[dict[str, Any]]:
    """Deliver dead-lettered webhooks once more (ids, or all of them when None), with their
    original webhook-id and body and a fresh signature. A delivered one leaves the dead
    letters and its job's (or batch's) record says delivered."""
    from worker.runtime import Runtime
    from worker.webhooks import deliver

    st = store(settings)
    letters = {e["id"]: e for e in dead_webhooks(settings)}
    if ids is not None:
        missing = [i for i in ids if i not in letters]
        if missing:
            raise OperationRefused(f"no dead-lettered webhook with id {', '.join(missing)}")
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    runtime = Runtime(settings)
    results = []
    try:
        for msg_id in ids if ids is not None else list(letters):
            letter = letters[msg_id]
            owner = str(letter.get("owner_id") or "")
            batch = letter.get("event_type") == BATCH_COMPLETED
            rerun = int(letter.get("rerun") or 0)  # which run of the job ended in it
            body_key = (
                st.keys.batch_event_body(owner) if batch else st.keys.event_body(owner, rerun)
            )
            body = _text(st.redis.get(body_key)) if owner else ""
            if not body:
                results.append({"id": msg_id, "ok": False, "status_code": None,
                                "error": "its original body is no longer kept"})  # fmt: skip
                continue
            result = deliver(
                runtime.http, letter["url"], body, msg_id, secret, settings.webhook_timeout_s
            )
            results.append({"id": msg_id, "ok": result.ok, "status_code": result.status_code,
                            "error": result.error})  # fmt: skip
            if result.ok:
                _mark_delivered(settings, owner, batch, rerun, result.status_code)
                st.forget_dead_letter(msg_id)
    finally:
        runtime.http.close()
    return results


def _mark_delivered(
    settings: Settings, owner_id: str, batch: bool, rerun: int, status_code: int | None
) -> None:
    st = store(settings)

    def delivered(hook: WebhookDelivery | None) -> bool:
        if hook is None:
            return False
        hook.state, hook.attempts = WebhookState.DELIVERED, hook.attempts + 1
        hook.last_status_code, hook.last_error = status_code, None
        hook.last_attempt_at = utcnow_iso()
        return True

    if not batch:
        # The record's webhook is its latest run's: one run again since has a webhook of its own.
        st.update(owner_id, lambda r: r.reruns == rerun and delivered(r.webhook))
        return
    record = st.get_batch(owner_id, with_jobs=False)
    if delivered(record.webhook) and record.webhook is not None:
        st.set_batch_fields(owner_id, {"webhook": record.webhook.model_dump_json()})


def _epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _seconds_since(iso: str | None) -> float:
    return 0.0 if not iso else datetime.now().timestamp() - _epoch_s(iso)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")
