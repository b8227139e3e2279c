"""The pipeline's steps: submit -> poll (in batches) -> finalize -> notify.

Each task runs entries claimed from the durable schedule (producer/core/schedule.py), under the
base class in worker/steps.py, which checks the claim, keeps its lease, routes each job by its
record and catches what nobody anticipated. Every step may run more than once (a lease that
ran out, a redelivered message), so each does only what its record says is still to do:
- submit: a job that already has a provider task id is never submitted again, and a create
  that may have taken effect (no answer, a 5xx, a crash between its answer and our record of
  it) is never sent blindly again: resent with the same Idempotency-Key, looked up by the key
  it sent, or the job ends "uncertain_create", as its dialect allows;
- poll: a job has one schedule entry, so one poll at a time, by construction;
- finalize: one deterministic S3 key per job, so a re-run overwrites, never duplicates;
- notify: one webhook-id per event, so a receiver can drop a repeat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from producer.core import names
from producer.core.errors import (
    BlockedUrl,
    BoundExceeded,
    InvalidRequest,
    InvalidVideo,
    JobNotFound,
    PermanentError,
    RetryableError,
)
from producer.core.metadata import object_metadata
from producer.core.names import SUBMIT_LANES, Lane
from producer.core.providers import candidates
from producer.core.records import (
    AttemptOutcome,
    JobRecord,
    JobStatus,
    Output,
    ProviderAttempt,
    WebhookDelivery,
    WebhookState,
    mark_cancelled,
    utcnow_iso,
)
from producer.core.requests import VideoRequest
from producer.core.settings import ApiFormat
from worker.app import app
from worker.dialect import UncertainCreate
from worker.media import S3RangeReader, probe
from worker.provider import ProviderClient, ProviderTask, TaskState
from worker.runtime import runtime
from worker.steps import BatchEntry, BatchStep, Job, Step, place
from worker.storage import COPY_FAILURES, UrlExpired, copy_url_to_s3, storage_outage
from worker.timing import (
    PollTiming,
    bounded_hint_s,
    estimate_from_progress,
    next_poll_s,
    retry_delay_s,
)
from worker.webhooks import record_attempt, record_dead_letter, retry_delay, send_event

log = structlog.get_logger("videoqueue.worker")

# A generation's time is learned only when the poll that saw it done came within this share
# of its age after the poll that saw it running.
HISTORY_BRACKET_SHARE = 0.25


def _seconds_between(iso: str | None, now: float) -> float:
    if not iso:
        return 0.0
    return now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _timing() -> PollTiming:
    s = runtime().settings
    return PollTiming(first_s=s.poll_first_s, factor=s.poll_factor, cap_s=s.poll_cap_s)


# --- submit ---


@app.task(name=names.SUBMIT, base=Step, lanes=SUBMIT_LANES)
def submit(job: Job) -> None:
    """Send the job to its provider once, then start polling it. Its rate token and provider
    slot were taken when its entry was claimed, at the head of its route
    (producer/core/limits.py)."""
    rt = runtime()
    record = job.record
    if record.batch_id and rt.store.batch_cancelled(record.batch_id):
        job.update(mark_cancelled)
        return job.revisit()
    if record.provider_task_id is None:
        route = rt.limits.route(job.id)
        if route is None:
            return _route(job)
        name = route[0]
        if name not in rt.providers:  # the providers file changed since it was routed
            if record.provider is not None:
                return job.fail("unknown_provider", f"provider {name!r} is no longer configured")
            return _route(job)
        provider = rt.provider(name)
        api_format = _format(record, provider)
        policy = provider.dialect.after_uncertain_create(api_format.value)
        # Pinned before the call, in the read that would see a cancel: should we crash before
        # its answer is recorded, the job may only go back to this provider; a job cancelled
        # since its step began sends nothing.
        attempt = _Attempt(name, resends_safely=policy is UncertainCreate.RESEND)
        record = rt.store.update(
            job.id, attempt, after=lambda r, pipe: rt.limits.set_route(r.id, [name], pipe)
        )
        if attempt.sends:
            rt.replicate()  # on the replicas before the create goes (a failover keeps it)
        job.record = record
        if attempt.sends and record.batch_id and rt.store.batch_cancelled(record.batch_id):
            # Its batch was cancelled since its step began (the flag is set before the jobs
            # are marked): pinned first, so a cancel that comes later finds it at the provider.
            record = job.update(_unsent(name))
        if record.terminal:  # cancelled before its create was sent
            return job.revisit()
        if attempt.sends:
            task = _create(job, name, provider, api_format, attempt.resending)
        elif policy is UncertainCreate.END:
            return _uncertain(job, name)
        else:
            found = _look_up(job, name, provider)
            if isinstance(found, _NotThere):  # it never took effect: sent now, same key
                record = job.update(_resending(name))
                if record.terminal:  # cancelled while we looked
                    return job.revisit()
                found = _create(job, name, provider, api_format, resending=True)
            task = found
        if task is None:
            return  # the job has moved on (retried later, or ended)
        record = job.update(_submitted(task, name))
        log.info("submitted", provider=name, provider_task_id=task.id)
        if record.terminal:  # cancelled while the provider answered
            provider.cancel(task.id)
    job.revisit(next_poll_s(_timing(), polls=0, elapsed_s=0.0,
                            usual_s=rt.history.usual_s(record.request)))  # fmt: skip


class _NotThere:
    """A lookup's answer: the provider has no task under the key."""


def _create(
    job: Job, name: str, provider: ProviderClient, api_format: ApiFormat, resending: bool
) -> ProviderTask | None:
    """The task the create made; None when it did not (the job retried later, or ended)."""
    request = VideoRequest.model_validate(job.record.request)
    try:
        return provider.create(request, api_format, idempotency_key=job.record.submit_key)
    except RetryableError as e:
        _retry(job, name, e)
    except PermanentError as e:
        job.update(_attempted(name, AttemptOutcome.FAILED, e.code))
        if resending and provider.dialect.lookup is not None:
            # Kling refuses a repeated external_task_id: its first create took effect after all.
            found = _look_up(job, name, provider)
            if not isinstance(found, _NotThere):
                return found  # the task, or None: the lookup failed and the job moved on
        job.fail(e.code, str(e))
    return None


def _look_up(job: Job, name: str, provider: ProviderClient) -> ProviderTask | _NotThere | None:
    """The task a create that may have taken effect made, found by the key it sent;
    _NotThere when the provider has none; None when the lookup failed (the job is retried
    later, or ended)."""
    rt = runtime()
    s = rt.settings
    record = job.record
    try:
        task = provider.find(record.submit_key)
    except RetryableError as e:
        if record.attempts >= s.submit_max_attempts:
            _uncertain(job, name, f"looking it up failed {record.attempts} times: {e}")
            return None
        delay_s = _retry_delay_s(e, record.attempts)
        log.info("lookup deferred", provider=name, delay_s=round(delay_s, 2), reason=str(e))
        job.revisit(delay_s)
        return None
    except PermanentError as e:
        _uncertain(job, name, f"looking it up was refused: {e}")
        return None
    if task is not None:
        log.info("found by its key", provider=name, provider_task_id=task.id)
        return task
    return _NotThere()


def _uncertain(job: Job, name: str, why: str = "", cause: Exception | None = None) -> None:
    """End a job whose create may have made a task that we cannot find: never sent blindly
    again, which could bill a second one. An operator reconciles with the provider. Without a
    why, the dialect can neither resend safely nor look up (cause: what made it uncertain)."""
    if not why:
        dialect = runtime().provider(name).dialect.name
        why = f"the {dialect} dialect has no idempotency key and no lookup"
        if cause is not None:
            why = f"{why}; {cause}"
    job.fail(
        "uncertain_create",
        f"a create sent to provider {name!r} may have made a task whose id never reached us, "
        f"and it is not sent again ({why}): look for the task of job {job.id} at {name!r}",
    )


def _retry_delay_s(error: RetryableError, attempts: int) -> float:
    """How long before the next submit call: the provider's hint (capped), else a backoff."""
    s = runtime().settings
    delay_s = bounded_hint_s(error.delay_s, s.retry_cap_s)
    if delay_s is None:
        delay_s = retry_delay_s(attempts - 1, s.retry_base_s, s.retry_cap_s)
    return delay_s


def _route(job: Job) -> None:
    """Give the job its route (the providers that may take it, in order), due again at once:
    its next claim takes a slot at the first of them with one free."""
    rt = runtime()
    record = job.record
    if record.provider is not None:  # its create may have reached this one: only there
        names = [record.provider]
    else:
        try:
            names = candidates(VideoRequest.model_validate(record.request), rt.settings)
        except InvalidRequest as e:  # the providers changed since it was enqueued
            return job.fail("no_provider", str(e))
    rt.limits.set_route(job.id, names)
    job.revisit()


def _retry(job: Job, name: str, error: RetryableError) -> None:
    """A create that may succeed later: at the next provider at once when it certainly did not
    take effect and no earlier create at this provider may have; else at the same provider
    after a backoff (same Idempotency-Key; where the dialect has none, looked up or ended)."""
    rt = runtime()
    s = rt.settings
    record = job.record
    outcome = AttemptOutcome.REFUSED if error.not_taken else AttemptOutcome.UNCERTAIN
    if record.attempts >= s.submit_max_attempts:
        # Recorded as it was: an operator reading the record sees where a task may exist.
        job.update(_attempted(name, outcome, error.code))
        return job.fail(error.code, f"gave up after {record.attempts} attempts: {error}")
    delay_s = _retry_delay_s(error, record.attempts)
    names = candidates(VideoRequest.model_validate(record.request), s)
    later = names[names.index(name) + 1 :] if name in names else []
    # The next provider at once; after the last, the first again after a wait.
    fallback, fallback_delay_s = (later, 0.0) if later else (names, delay_s)

    def route(r: JobRecord) -> list[str]:
        return fallback if r.provider is None else [name]

    job.record = rt.store.update(
        job.id,
        _attempted(name, outcome, error.code),
        after=lambda r, pipe: rt.limits.set_route(r.id, route(r), pipe),
    )
    if job.record.provider is None:
        delay_s = fallback_delay_s
    elif outcome is AttemptOutcome.UNCERTAIN:
        provider = rt.provider(name)
        policy = provider.dialect.after_uncertain_create(_format(job.record, provider).value)
        if policy is UncertainCreate.END:
            return _uncertain(job, name, cause=error)
    log.info("submit deferred", provider=name, outcome=outcome.value,
             next_provider=route(job.record)[0], delay_s=round(delay_s, 2),
             reason=str(error))  # fmt: skip
    job.revisit(delay_s)


def _format(record: JobRecord, provider: ProviderClient) -> ApiFormat:
    """The router's create format: the request's own, else (one provider) the one recorded at
    enqueue, else the provider's."""
    asked = record.request.get("api_format")
    if asked is None and runtime().settings.providers_file is None:
        asked = record.api_format
    return ApiFormat(asked or provider.api_format)


@dataclass
class _Attempt:
    """The change that pins the job to a provider just before its create is sent (a store
    update: its read is fresh). A cancelled job is left alone; a create an earlier worker sent
    and never recorded an answer to becomes uncertain; and where that provider may have a task
    of this job already, the create is sent again only if the dialect resends safely (with
    the same idempotency key)."""

    name: str
    resends_safely: bool
    sends: bool = False  # the create is to be sent (else: looked up or ended)
    resending: bool = False  # an earlier create at this provider may have taken effect

    def __call__(self, record: JobRecord) -> bool:
        self.sends = self.resending = False  # an update retried on a conflict calls again
        if record.terminal:
            return False
        for attempt in record.provider_attempts:
            if attempt.outcome is AttemptOutcome.SENT:  # its worker died waiting for the answer
                attempt.outcome, attempt.code = AttemptOutcome.UNCERTAIN, "unanswered"
        self.resending = record.uncertain_provider() == self.name
        record.attempts += 1
        record.provider = self.name
        if self.resending and not self.resends_safely:
            return True
        record.provider_attempts.append(
            ProviderAttempt(provider=self.name, outcome=AttemptOutcome.SENT)
        )
        self.sends = True
        return True


def _unsent(name: str) -> Any:
    """Cancel a job whose create was pinned and will not be sent after all."""

    def change(record: JobRecord) -> None:
        _settle(record, name, AttemptOutcome.REFUSED, "cancelled")
        mark_cancelled(record)

    return change


def _resending(name: str) -> Any:
    def change(record: JobRecord) -> bool:
        if record.terminal:
            return False
        record.provider_attempts.append(ProviderAttempt(provider=name, outcome=AttemptOutcome.SENT))
        return True

    return change


def _settle(record: JobRecord, name: str, outcome: AttemptOutcome, code: str | None) -> None:
    """Record a create's outcome in its "sent" entry (a new entry if a crash lost that)."""
    for attempt in reversed(record.provider_attempts):
        if attempt.provider == name and attempt.outcome is AttemptOutcome.SENT:
            attempt.outcome, attempt.code, attempt.at = outcome, code, utcnow_iso()
            return
    record.provider_attempts.append(ProviderAttempt(provider=name, outcome=outcome, code=code))


def _attempted(name: str, outcome: AttemptOutcome, code: str | None) -> Any:
    def change(record: JobRecord) -> None:
        _settle(record, name, outcome, code)
        if outcome is AttemptOutcome.REFUSED and record.uncertain_provider() is None:
            record.provider = None  # it never reached this provider: free to go elsewhere

    return change


def _submitted(task: ProviderTask, name: str) -> Any:
    def change(record: JobRecord) -> None:
        record.provider_task_id = task.id
        record.provider = name
        _settle(record, name, AttemptOutcome.CREATED, None)
        record.provider_status = task.raw_status
        record.submitted_at = record.submitted_at or utcnow_iso()
        if record.status is JobStatus.QUEUED:
            record.status = JobStatus.SUBMITTED

    return change


# --- poll ---


@dataclass
class _Observed:
    """What one status answer changes, and when to ask again."""

    answer: ProviderTask | Exception
    elapsed_s: float
    delay_s: float = 0.0
    estimate_s: float | None = None
    duration_s: float | None = None  # the generation's time, once it is done

    def apply(self, record: JobRecord) -> bool:
        if record.terminal:
            return False  # cancelled while we asked: left to the clean-up below
        record.polls += 1
        record.estimate_s = self.estimate_s if self.estimate_s is not None else record.estimate_s
        if not isinstance(self.answer, ProviderTask):
            return True  # a failed query: the last estimate stands
        task = self.answer
        record.polled_s = self.elapsed_s
        record.provider_status = task.raw_status
        if task.progress is not None:
            record.progress, record.progress_s = task.progress, self.elapsed_s
        record.usage = task.usage or record.usage
        if task.state is TaskState.RUNNING and record.status is JobStatus.SUBMITTED:
            record.status = JobStatus.PROCESSING
        if task.state is TaskState.DONE and record.status in (
            JobStatus.SUBMITTED,
            JobStatus.PROCESSING,
        ):
            record.status = JobStatus.FINALIZING
        return True


@app.task(name=names.POLL, base=Step, bind=True, lanes=frozenset({Lane.POLL}), batched=True)
def poll(self: Step, jobs: list[Job]) -> None:
    """Ask the provider how each job is doing, all at once: one read of their records, the
    status queries concurrently, one write of what they said and when to ask next."""
    rt = runtime()
    s = rt.settings
    seconds, micros = rt.store.redis.time()  # one clock for every host's deadlines
    now = seconds + micros / 1e6
    # Asked even past the deadline: a video done since the last poll is paid for.
    answers = self.each_in_threads(_ask, jobs)
    observed: dict[str, _Observed] = {}
    expired: list[Job] = []
    for job, answer in zip(jobs, answers, strict=True):
        with self.boundary(job.id, job.lane, job.token):
            elapsed_s = _seconds_between(job.record.submitted_at, now)
            seen = _observe(job, answer, elapsed_s)
            if seen is not None and elapsed_s > s.deadline_s and not _done(answer):
                job.fail("timeout", f"not finished {s.deadline_s:g} s after submission")
                expired.append(job)
            elif seen is not None:
                observed[job.id] = seen
    # After the failures are written: a slow or failing cancel must not hold them back.
    self.each_in_threads(_cancel_upstream, expired)
    if not observed:
        return
    tokens = {job.id: job.token for job in jobs}

    def after(record: JobRecord, pipe: Any) -> None:
        seen = observed[record.id]
        place(record.id, record, seen.delay_s, tokens[record.id], pipe)
        if isinstance(seen.answer, ProviderTask) and seen.answer.state is TaskState.DONE:
            if seen.answer.video_url:
                rt.store.stash_file_url(record.id, seen.answer.video_url, pipe)
            if seen.duration_s is not None:
                rt.history.record(record.request, seen.duration_s, pipe)

    records: dict[str, JobRecord] = {}
    with self.boundary(list(observed), Lane.POLL, [tokens[j] for j in observed]):
        records = rt.store.update_many(
            {job_id: seen.apply for job_id, seen in observed.items()}, after=after
        )
    for job in jobs:
        if job.id in observed and (record := records.get(job.id)) and record.terminal:
            with self.boundary(job.id, job.lane, job.token):
                job.record = record
                self.clean_up(job)
                job.revisit()


def _generation_s(
    last_polled_s: float | None, elapsed_s: float, poll_first_s: float
) -> float | None:
    """How long the generation took, if our polls bracket its end closely enough to say: a
    job first seen done long after its previous poll would teach the history our lateness
    (and the next jobs, polled later, would teach it more). The bracket is at least two
    first-poll waits wide: the cold backoff of a short model never brackets within a quarter
    of its age, and such a model would never learn its time."""
    bracket_s = max(HISTORY_BRACKET_SHARE * elapsed_s, 2 * poll_first_s)
    if last_polled_s is None or elapsed_s - last_polled_s > bracket_s:
        return None
    return (last_polled_s + elapsed_s) / 2


def _ask(job: Job) -> ProviderTask | Exception:
    """The job's status, or what went wrong asking (sorted out per job, afterwards)."""
    rt = runtime()
    try:
        provider = rt.provider(job.record.provider)
        return provider.get(job.record.provider_task_id or "", _format(job.record, provider))
    except Exception as e:  # noqa: BLE001  (handed to the job's own failure boundary)
        return e


def _done(answer: ProviderTask | Exception) -> bool:
    return isinstance(answer, ProviderTask) and answer.state is TaskState.DONE


def _cancel_upstream(job: Job) -> None:
    """Ask the provider to drop a timed-out job's task, where its dialect can (best effort:
    the job has failed already)."""
    record = job.record
    try:
        cancelled = runtime().provider(record.provider).cancel(record.provider_task_id or "")
    except Exception as e:  # noqa: BLE001  (nothing is left to fail: the job has ended)
        log.warning("timed-out task not cancelled", error_type=type(e).__name__)
        return
    log.info("timed-out task cancelled" if cancelled else "timed-out task not cancelled")


def _observe(job: Job, answer: ProviderTask | Exception, elapsed_s: float) -> _Observed | None:
    """What to record and when to poll next; None when the answer ended the job."""
    rt = runtime()
    s = rt.settings
    record = job.record
    if isinstance(answer, PermanentError):
        job.fail(answer.code, str(answer))
        return None
    if isinstance(answer, Exception) and not isinstance(answer, RetryableError):
        raise answer
    seen = _Observed(answer, elapsed_s)
    hint_s = answer.delay_s if isinstance(answer, RetryableError) else answer.poll_after_s
    if isinstance(answer, ProviderTask):
        if answer.state is TaskState.FAILED:
            job.fail(
                answer.error_code or "generation_failed",
                answer.error_message or f"the provider reports {answer.raw_status!r}",
            )
            return None
        if answer.state is TaskState.DONE:
            seen.duration_s = _generation_s(record.polled_s, elapsed_s, s.poll_first_s)
            return seen  # finalize is due at once
        if answer.state is TaskState.UNKNOWN and answer.raw_status is not None:
            # Unknown words keep the job polling until its deadline: a new word for "done"
            # costs time, not the video. Counted so that operators can teach us the word.
            rt.store.count_unknown_status(str(answer.raw_status))
            log.warning("unknown provider status", status=answer.raw_status)
        seen.estimate_s = estimate_from_progress(
            answer.progress,
            elapsed_s,
            last_progress=record.progress,
            last_elapsed_s=record.progress_s,
        )
    delay_s = next_poll_s(
        _timing(),
        polls=record.polls + 1,
        elapsed_s=elapsed_s,
        estimate_s=seen.estimate_s if seen.estimate_s is not None else record.estimate_s,
        usual_s=rt.history.usual_s(record.request),
        hint_s=bounded_hint_s(hint_s, s.poll_cap_s),
    )
    if isinstance(answer, RetryableError) and answer.delay_s is None and record.polled_s:
        # A refused query without a hint is noise in the provider, not news about the job:
        # ask again soon (a share of the time since the last answer) rather than a whole
        # backoff step later, which would land long after an end that fell in between.
        since_s = max(0.0, elapsed_s - record.polled_s)
        delay_s = min(delay_s, max(s.poll_first_s / 4, 0.25 * since_s))
    # Never sleep past the deadline: the last poll lands on it.
    seen.delay_s = min(delay_s, max(0.0, s.deadline_s - elapsed_s) + 0.05)
    return seen


# --- finalize ---


@app.task(name=names.FINALIZE, base=Step, lanes=frozenset({Lane.FINALIZE}))
def finalize(job: Job) -> None:
    """Copy the finished MP4 into S3, read its shape, and complete the job."""
    rt = runtime()
    s = rt.settings
    record = job.update(_count_copy)  # a round of tries; the lease covers the whole round
    try:
        # A killed worker's upload is left open: someone must abort it. (A pool process's
        # first finalize also connects to S3 here, which may be down.)
        rt.sweep_uploads()
    except COPY_FAILURES as e:
        if not storage_outage(e):
            raise
        return _wait_for_storage(job, e)
    key = s.s3_key_template.format(job_id=job.id)
    url = rt.store.file_url(job.id)
    failure: Exception | None = None
    for _ in range(s.download_max_attempts):
        try:
            url = url or _fresh_file_url(record)
            provider = rt.provider(record.provider)
            metadata = object_metadata(record.id, record.metadata)
            upload = copy_url_to_s3(rt.http, url, provider.credentials(), rt.s3, key, metadata,
                                    s, provider=provider.name)  # fmt: skip
            info = probe(S3RangeReader(rt.s3, s.s3_bucket, key, upload.size_bytes))
            failure = None
            break
        except (PermanentError, BlockedUrl, BoundExceeded) as e:
            return job.fail(e.code, str(e))
        except (UrlExpired, *COPY_FAILURES) as e:
            failure = e
            if isinstance(e, UrlExpired):
                url = None  # a fresh query gives a fresh URL
            log.info("copy retried", reason=_reason(e))
            if storage_outage(e):
                break  # downloading again now would only meet the same outage
    if failure is not None:
        if storage_outage(failure):
            return _wait_for_storage(job, failure)
        rt.store.forget_file_url(job.id)
        if record.copy_attempts >= s.download_max_attempts:
            code = "invalid_video" if isinstance(failure, InvalidVideo) else "download_failed"
            return job.fail(code, f"could not copy the video: {_reason(failure)}")
        delay_s = retry_delay_s(record.copy_attempts - 1, s.retry_base_s, s.retry_cap_s)
        return job.revisit(delay_s)
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

    job.end(completed, "video.completed")
    rt.store.forget_file_url(job.id)
    log.info("completed", key=key, size_bytes=upload.size_bytes)


def _wait_for_storage(job: Job, failure: Exception) -> None:
    """Our S3 is down: try again later without spending the job's copy attempts.

    An outage of our own bucket says nothing about the provider's file; counted as a failed
    download it would fail every finalizing job, and throw away videos already paid for.
    The wait is bounded by VIDEOQUEUE_DEADLINE_S after submission, like the generation.
    """
    s = runtime().settings
    if _seconds_between(job.record.submitted_at, time.time()) > s.deadline_s:
        return job.fail("storage_unavailable", f"S3 still failing: {_reason(failure)}")
    job.update(_uncount_copy)
    log.warning("storage unavailable; copy postponed", reason=_reason(failure))
    # Backoff as after the job's last copy attempt: an outage is not cured by asking often.
    job.revisit(retry_delay_s(s.download_max_attempts, s.retry_base_s, s.retry_cap_s))


def _reason(e: Exception) -> str:
    if isinstance(e, UrlExpired):
        return f"file URL expired ({e})"
    return f"{type(e).__name__}: {str(e)[:300]}"


def _count_copy(record: JobRecord) -> None:
    record.copy_attempts += 1


def _uncount_copy(record: JobRecord) -> None:
    record.copy_attempts -= 1


def _fresh_file_url(record: JobRecord) -> str:
    provider = runtime().provider(record.provider)
    url = provider.get(record.provider_task_id or "", _format(record, provider)).video_url
    if not url:
        raise OSError("the provider gave no file URL")
    return url


# --- notify ---


@app.task(name=names.NOTIFY, base=Step, lanes=frozenset({Lane.NOTIFY}))
def notify(job: Job) -> None:
    """Deliver the job's webhook; retry on the configured schedule, then dead-letter."""
    rt = runtime()
    hook = job.record.webhook
    assert hook is not None  # route() sends only jobs with a pending webhook here
    rerun = job.record.reruns
    body_key = rt.store.keys.event_body(job.id, rerun)
    msg_id, result = send_event(
        rt.store, rt.http, rt.settings, job.id, body_key, hook, job.record.public(), rerun
    )
    schedule_s = rt.settings.webhook_schedule_s

    def count(r: JobRecord) -> None:
        assert r.webhook is not None
        record_attempt(r.webhook, result, len(schedule_s))

    record = job.update(count)
    assert record.webhook is not None
    if record.webhook.state is WebhookState.DEAD:
        record_dead_letter(rt.store, job.id, record.webhook, rerun)
        log.warning("webhook dead-lettered", msg_id=msg_id, attempts=record.webhook.attempts)
    pending = record.webhook.state is WebhookState.PENDING
    job.revisit(retry_delay(record.webhook, result, schedule_s) if pending else 0.0)


@app.task(name=names.NOTIFY_BATCH, base=BatchStep, lanes=frozenset({Lane.NOTIFY_BATCH}))
def notify_batch(entry: BatchEntry) -> None:
    """Deliver the batch.completed webhook (scheduled once, when the batch's last job ended)."""
    rt = runtime()
    st = rt.store
    url = st.batch_webhook_url(entry.id)
    try:
        batch = st.get_batch(entry.id, with_jobs=False)
    except JobNotFound:
        return _batch_expired(entry)
    hook = batch.webhook
    if not url or (hook is not None and hook.state is not WebhookState.PENDING):
        return entry.done()
    if hook is None:
        hook = WebhookDelivery(url=url, event_type=names.BATCH_COMPLETED)
    data = batch.public()
    data.pop("job_ids", None)  # 10,000 ids are not news; get_batch() has them
    body_key = st.keys.batch_event_body(entry.id)
    _, result = send_event(st, rt.http, rt.settings, entry.id, body_key, hook, data)
    schedule_s = rt.settings.webhook_schedule_s
    record_attempt(hook, result, len(schedule_s))
    # One claim holds a batch's entry at a time: a plain write.
    if not st.set_batch_fields(entry.id, {"webhook": hook.model_dump_json()}):
        return _batch_expired(entry)
    if hook.state is WebhookState.DEAD:
        record_dead_letter(st, entry.id, hook)
    if hook.state is WebhookState.PENDING:
        return entry.revisit(retry_delay(hook, result, schedule_s))
    entry.done()


def _batch_expired(entry: BatchEntry) -> None:
    """The batch's keys expired (VIDEOQUEUE_RECORD_TTL_S) while its webhook was still retried:
    nothing is left to send nor to record an attempt in, so its entry leaves the schedule."""
    log.warning("batch webhook dropped: the batch's records have expired")
    entry.done()
