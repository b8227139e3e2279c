"""The pipeline's tasks: submit -> poll (rescheduled, never sleeping) -> finalize -> notify.

Every task may run more than once (acks_late redelivers after a crash), so each one reads
the job's record first and does only what is still to be done:
- submit: a job that already has a provider task id is never submitted again, and the
  provider sees the job id as the Idempotency-Key should a crash fall between its answer
  and our record of it;
- poll: one live chain per job, enforced by a token in Redis (see _schedule_poll);
- finalize: one deterministic S3 key per job, so a re-run overwrites, never duplicates;
- notify: one webhook-id per event, so a receiver can drop a repeat.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from celery import Task

from producer import names
from producer.errors import PermanentError, RetryableError
from producer.jobs import mark_cancelled
from producer.messages import task_message
from producer.records import (
    ErrorInfo,
    JobRecord,
    JobStatus,
    Output,
    WebhookDelivery,
    WebhookState,
    utcnow_iso,
)
from producer.requests import VideoRequest
from producer.settings import ApiFormat
from worker.app import app
from worker.limits import BULK, INTERACTIVE
from worker.media import S3RangeReader, probe
from worker.provider import TaskState
from worker.runtime import runtime
from worker.schedule import poll_delay_s, retry_delay_s
from worker.storage import stream_to_s3
from worker.webhooks import DeliveryResult, deliver, message_id, record_attempt, retry_delay

log = structlog.get_logger("videoqueue.worker")

_DOWNLOAD_CHUNK_BYTES = 1024 * 1024


def later(task: Task, args: list[Any], delay_s: float, **kwargs: Any) -> None:
    """Run task(*args, **kwargs) in delay_s seconds.

    The wait is a deferred message in Redis (worker/deferred.py), not a Celery countdown:
    no worker holds it in memory, a crashed worker loses none, and no wait is ever close
    to the broker's visibility timeout however long it is (webhook retries take hours).
    It goes back to the queue the current task came from, so batch jobs stay on theirs.
    """
    rt = runtime()
    info = getattr(task.request, "delivery_info", None) or {}
    queue = info.get("routing_key") or rt.settings.queue
    if delay_s <= 0:
        task.apply_async(args=args, kwargs=kwargs, queue=queue)
        return
    rt.deferred.defer(task.name, args, kwargs, queue, time.time() + delay_s)


def _seconds_since(iso: str | None) -> float:
    if not iso:
        return 0.0
    return time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- ending a job ---


def _finish(job_id: str, change: Any, event_type: str) -> JobRecord | None:
    """Apply a terminal change, give back the job's provider slot, and queue its webhook in
    the same transaction as the change; None if the job had already ended."""
    rt = runtime()
    ended: list[bool] = []

    def apply(record: JobRecord) -> bool:
        if record.terminal:
            return False
        change(record)
        record.finished_at = utcnow_iso()
        if url := record.request.get("webhook_url"):
            record.webhook = WebhookDelivery(url=url, event_type=event_type)
        ended.append(True)
        return True

    def webhook(record: JobRecord) -> list[tuple[str, str]]:
        if record.webhook is None:
            return []
        return [(rt.settings.queue, task_message(names.NOTIFY, [job_id], rt.settings.queue))]

    record = rt.store.update(job_id, apply, then=webhook)
    rt.limits.give_slot(job_id)
    return record if ended else None


def fail(job_id: str, code: str, message: str) -> None:
    """End the job as failed, with a code and a readable message."""

    def change(record: JobRecord) -> None:
        record.status = JobStatus.FAILED
        record.error = ErrorInfo(code=code, message=message)

    if _finish(job_id, change, "video.failed"):
        log.warning("job failed", job_id=job_id, code=code, message=message)


# --- submit ---


@app.task(name=names.SUBMIT, bind=True)
def submit(self: Task, job_id: str, reserved: bool = False) -> None:
    """Send the job to the provider once, then start polling it.

    Args:
        reserved: this run already holds a token of the shared rate limit.
    """
    rt = runtime()
    s = rt.settings
    record = rt.store.get(job_id)
    if record.batch_id and not record.terminal and rt.store.batch_cancelled(record.batch_id):
        record = rt.store.update(job_id, mark_cancelled)
    if record.terminal:
        rt.limits.give_slot(job_id)  # it may have been handed one while it waited
        return
    if record.provider_task_id is None:
        lane = BULK if record.batch_id else INTERACTIVE
        if not rt.limits.take_slot(job_id, lane):
            log.info("waiting for a provider slot", job_id=job_id, lane=lane)
            return
        if not reserved and (wait_s := rt.limits.wait_for_token_s()) > 0:
            later(self, [job_id], wait_s, reserved=True)
            return

        def count_attempt(r: JobRecord) -> None:
            r.attempts += 1

        record = rt.store.update(job_id, count_attempt)
        request = VideoRequest.model_validate(record.request)
        try:
            task = rt.provider.create(
                request, ApiFormat(record.api_format or s.api_format), idempotency_key=job_id
            )
        except RetryableError as e:
            if record.attempts >= s.submit_max_attempts:
                fail(job_id, e.code, f"gave up after {record.attempts} attempts: {e}")
                return
            delay_s = e.delay_s
            if delay_s is None:
                delay_s = retry_delay_s(record.attempts - 1, s.retry_base_s, s.retry_cap_s)
            log.info("submit deferred", job_id=job_id, delay_s=round(delay_s, 2), reason=str(e))
            later(self, [job_id], delay_s)
            return
        except PermanentError as e:
            fail(job_id, e.code, str(e))
            return

        def submitted(r: JobRecord) -> None:
            r.provider_task_id = task.id
            r.provider_status = task.raw_status
            r.submitted_at = r.submitted_at or utcnow_iso()
            if r.status is JobStatus.QUEUED:
                r.status = JobStatus.SUBMITTED

        record = rt.store.update(job_id, submitted)
        log.info("submitted", job_id=job_id, provider_task_id=task.id)
        if record.terminal:  # cancelled while the provider answered
            rt.provider.cancel(task.id)
            rt.limits.give_slot(job_id)
            return
    _schedule_poll(job_id, rt.store.poll_token(job_id), s.poll_first_s)


# --- poll ---


def _schedule_poll(
    job_id: str, expected_token: str, delay_s: float, *, reserved: bool = False
) -> None:
    """Queue the job's next poll and make it the only live one.

    The message goes out first, then the token moves to it. A crash in between leaves the
    old token in place, so the redelivered old poll runs again and supersedes the orphan;
    a lost race (another chain moved the token) leaves this new message stale, and a stale
    poll does nothing. So exactly one chain survives.
    """
    token = uuid.uuid4().hex
    later(poll, [job_id, token], delay_s, reserved=reserved)
    runtime().store.swap_poll_token(job_id, expected_token, token)


@app.task(name=names.POLL, bind=True)
def poll(self: Task, job_id: str, token: str, reserved: bool = False) -> None:
    """Ask the provider how the job is doing; hand off, fail, or poll again later.

    Args:
        token: this poll chain's token; a poll whose chain was superseded does nothing.
        reserved: this run already holds a token of the shared rate limit.
    """
    rt = runtime()
    s = rt.settings
    if rt.store.poll_token(job_id) != token:
        return  # superseded by a newer chain
    record = rt.store.get(job_id)
    if record.status is JobStatus.CANCELLED and record.provider_task_id:
        # Cancelled while generating: stop it upstream where the provider allows.
        rt.provider.cancel(record.provider_task_id)
    if record.terminal:
        rt.limits.give_slot(job_id)
        return
    if not reserved and (wait_s := rt.limits.wait_for_token_s()) > 0:
        _schedule_poll(job_id, token, wait_s, reserved=True)
        return
    elapsed_s = _seconds_since(record.submitted_at)
    if elapsed_s > s.deadline_s:
        fail(job_id, "timeout", f"not finished {s.deadline_s:g} s after submission")
        return
    api_format = ApiFormat(record.api_format or s.api_format)
    try:
        task = rt.provider.get(record.provider_task_id or "", api_format)
    except RetryableError as e:
        delay_s = max(
            e.delay_s or 0.0,
            poll_delay_s(
                record.polls, first_s=s.poll_first_s, factor=s.poll_factor, cap_s=s.poll_cap_s
            ),
        )
        _schedule_poll(job_id, token, delay_s)
        return
    except PermanentError as e:
        fail(job_id, e.code, str(e))
        return

    def observed(r: JobRecord) -> None:
        r.polls += 1
        r.provider_status = task.raw_status
        r.progress = task.progress if task.progress is not None else r.progress
        if task.state is TaskState.RUNNING and r.status is JobStatus.SUBMITTED:
            r.status = JobStatus.PROCESSING
        if task.state is TaskState.DONE and r.status in (JobStatus.SUBMITTED, JobStatus.PROCESSING):
            r.status = JobStatus.FINALIZING

    record = rt.store.update(job_id, observed)
    if task.state in (TaskState.DONE, TaskState.FAILED):
        rt.limits.give_slot(job_id)  # the generation is over at the provider
    if record.terminal:
        return
    if task.state is TaskState.DONE:
        finalize.apply_async(args=[job_id, task.video_url])
        rt.store.swap_poll_token(job_id, token, "")
        return
    if task.state is TaskState.FAILED:
        fail(
            job_id,
            task.error_code or "generation_failed",
            task.error_message or f"the provider reports {task.raw_status!r}",
        )
        return
    if task.state is TaskState.UNKNOWN:
        # Unknown words keep the job polling until its deadline: a new word for "done"
        # costs time, not the video. Counted so that operators can teach us the word.
        rt.store.count_unknown_status(str(task.raw_status))
        log.warning("unknown provider status", job_id=job_id, status=task.raw_status)
    delay_s = poll_delay_s(
        record.polls,
        first_s=s.poll_first_s,
        factor=s.poll_factor,
        cap_s=s.poll_cap_s,
        hint_s=task.poll_after_s,
        progress=task.progress,
        elapsed_s=elapsed_s,
    )
    # Never sleep past the deadline: the last poll lands on it.
    delay_s = min(delay_s, max(0.0, s.deadline_s - elapsed_s) + 0.05)
    _schedule_poll(job_id, token, delay_s)


# --- finalize ---


class _UrlExpired(Exception):
    """Raised when the provider's file URL answers 403/410: ask the provider for a new one."""


def _copy(url: str, job_id: str, key: str, metadata: dict[str, str]) -> Any:
    rt = runtime()
    s = rt.settings
    headers = rt.provider.download_headers(url)
    # httpx drops the Authorization header on a redirect to another origin, so the API
    # key never reaches a CDN; download_headers() already leaves it off foreign URLs.
    with rt.http.stream(
        "GET", url, headers=headers, follow_redirects=True, timeout=s.download_timeout_s
    ) as response:
        if response.status_code in (403, 410):
            raise _UrlExpired(f"HTTP {response.status_code}")
        if not response.is_success:
            raise OSError(f"download answered HTTP {response.status_code}")
        expected = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        return stream_to_s3(
            response.iter_bytes(_DOWNLOAD_CHUNK_BYTES),
            rt.s3,
            s.s3_bucket,
            key,
            metadata=metadata,
            part_size_bytes=s.s3_part_size_bytes,
            parts_in_flight=s.s3_parts_in_flight,
            expected_size_bytes=int(expected) if expected and not encoded else None,
        )


def _object_metadata(record: JobRecord) -> dict[str, str]:
    # S3 metadata travels in HTTP headers: ASCII only, so other text is percent-encoded.
    meta = {"job-id": record.id}
    for k, v in record.metadata.items():
        meta[quote(k.lower(), safe="-_.")] = v if v.isascii() else quote(v)
    return meta


@app.task(name=names.FINALIZE, bind=True)
def finalize(self: Task, job_id: str, url: str | None = None, rounds: int = 0) -> None:
    """Copy the finished MP4 into S3, read its shape, and complete the job."""
    rt = runtime()
    s = rt.settings
    record = rt.store.get(job_id)
    if record.status is not JobStatus.FINALIZING:
        return
    api_format = ApiFormat(record.api_format or s.api_format)
    key = s.s3_key_template.format(job_id=job_id)
    upload = None
    last_error = ""
    for _ in range(s.download_max_attempts):
        try:
            if url is None:
                url = rt.provider.get(record.provider_task_id or "", api_format).video_url
                if not url:
                    raise OSError("the provider gave no file URL")
            upload = _copy(url, job_id, key, _object_metadata(record))
            break
        except _UrlExpired as e:
            last_error = f"file URL expired ({e})"
            url = None  # a fresh query gives a fresh URL
        except (httpx.HTTPError, OSError, RetryableError, BotoCoreError, ClientError) as e:
            # S3 down or slow is as passing as the provider's CDN being so: try again.
            last_error = f"{type(e).__name__}: {e}"
        except PermanentError as e:
            fail(job_id, e.code, str(e))
            return
        log.info("download retried", job_id=job_id, reason=last_error)
    if upload is None:
        if rounds + 1 < s.download_max_attempts:
            delay_s = retry_delay_s(rounds, s.retry_base_s, s.retry_cap_s)
            later(self, [job_id, None], delay_s, rounds=rounds + 1)
        else:
            fail(job_id, "download_failed", f"could not copy the video: {last_error}")
        return
    info = probe(S3RangeReader(rt.s3, s.s3_bucket, key, upload.size_bytes))
    output = Output(
        bucket=s.s3_bucket,
        key=key,
        size_bytes=upload.size_bytes,
        sha256=upload.sha256,
        width=info.width,
        height=info.height,
        duration_s=info.duration_s,
    )

    def completed(r: JobRecord) -> None:
        r.status = JobStatus.COMPLETED
        r.output = output
        r.progress = 100

    _finish(job_id, completed, "video.completed")
    log.info("completed", job_id=job_id, key=key, size_bytes=upload.size_bytes)


# --- notify ---


@dataclass
class _Attempt:
    """One delivery attempt of an event, and what follows from it."""

    task: Task
    args: list[Any]
    msg_id: str
    result: DeliveryResult

    def count(self, hook: WebhookDelivery) -> None:
        record_attempt(hook, self.result, len(runtime().settings.webhook_schedule_s))

    def follow_up(self, hook: WebhookDelivery) -> None:
        """Dead-letter a delivery that ran out of attempts, or schedule its next one."""
        if hook.state is WebhookState.DEAD:
            runtime().store.record_dead_letter(self.msg_id, hook.model_dump(mode="json"))
            log.warning("webhook dead-lettered", msg_id=self.msg_id, attempts=hook.attempts)
        elif hook.state is WebhookState.PENDING:
            schedule_s = runtime().settings.webhook_schedule_s
            later(self.task, self.args, retry_delay(hook, self.result, schedule_s))


def _send(task: Task, owner_id: str, hook: WebhookDelivery, data: dict[str, Any]) -> _Attempt:
    """Deliver one event once. The body is fixed at the first attempt, so every retry
    carries the same bytes under the same webhook-id; only the signature's time is new."""
    rt = runtime()
    s = rt.settings
    data.pop("webhook", None)  # delivery bookkeeping changes per attempt; the event does not
    body = rt.store.fix_event_body(
        rt.store.keys.event_body(owner_id),
        json.dumps({"type": hook.event_type, "timestamp": utcnow_iso(), "data": data}),
    )
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    msg_id = message_id(owner_id, hook.event_type)
    result = deliver(rt.http, hook.url, body, msg_id, secret, s.webhook_timeout_s)
    return _Attempt(task, [owner_id], msg_id, result)


@app.task(name=names.NOTIFY, bind=True)
def notify(self: Task, job_id: str) -> None:
    """Deliver the job's webhook; retry on the configured schedule, then dead-letter."""
    st = runtime().store
    record = st.get(job_id)
    if record.webhook is None or record.webhook.state is not WebhookState.PENDING:
        return
    attempt = _send(self, job_id, record.webhook, record.public())

    def count(r: JobRecord) -> None:
        assert r.webhook is not None
        attempt.count(r.webhook)

    record = st.update(job_id, count)
    assert record.webhook is not None
    attempt.follow_up(record.webhook)


@app.task(name=names.NOTIFY_BATCH, bind=True)
def notify_batch(self: Task, batch_id: str) -> None:
    """Deliver the batch.completed webhook (queued once, when the batch's last job ended)."""
    st = runtime().store
    url = st.batch_webhook_url(batch_id)
    if not url:
        return
    batch = st.get_batch(batch_id, with_jobs=False)
    hook = batch.webhook or WebhookDelivery(url=url, event_type="batch.completed")
    if hook.state is not WebhookState.PENDING:
        return
    data = batch.public()
    data.pop("job_ids", None)  # 10,000 ids are not news; get_batch() has them
    attempt = _send(self, batch_id, hook, data)
    attempt.count(hook)
    # One notify_batch runs per batch at a time (its retries are chained): a plain write.
    st.set_batch_fields(batch_id, {"webhook": hook.model_dump_json()})
    attempt.follow_up(hook)
