"""The pipeline's steps: submit -> poll (in batches) -> finalize -> notify.

Each task runs entries claimed from the durable schedule (producer/core/schedule.py), under the
base class in worker/steps.py, which checks the claim, keeps its lease, routes each job by its
record and catches what nobody anticipated; a job's moves are methods of the job
(worker/job.py), and when to try again is the retry policy's (worker/retries.py). Every step
may run more than once (a lease that ran out, a redelivered message), so each does only what
its record says is still to do:
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
from enum import Enum
from typing import Any

import structlog

from producer.core import names
from producer.core.callbacks import TOKEN_GRACE_S, callback_url
from producer.core.errors import (
    BlockedUrl,
    BoundExceeded,
    FileNotFetched,
    FileRefused,
    FileUnreachable,
    InvalidRequest,
    InvalidVideo,
    JobNotFound,
    PermanentError,
    RetryableError,
)
from producer.core.ledger import task_price_usd
from producer.core.metadata import object_metadata
from producer.core.names import SUBMIT_LANES, Lane
from producer.core.providers import candidates, providers
from producer.core.records import (
    AttemptOutcome,
    JobRecord,
    JobStatus,
    Output,
    WebhookDelivery,
    WebhookState,
)
from producer.core.requests import VideoRequest
from producer.core.settings import ApiFormat, Settings
from worker.app import app
from worker.dialect import UncertainCreate
from worker.job import BatchEntry, Job
from worker.media import S3RangeReader, VideoInfo, probe
from worker.poster import make_poster
from worker.provider import ProviderClient, ProviderTask, TaskState
from worker.steps import BatchStep, Step
from worker.storage import (
    COPY_FAILURES,
    Upload,
    copy_url_to_s3,
    storage_outage,
    url_expires_at,
)
from worker.timing import (
    PollTiming,
    bounded_hint_s,
    estimate_from_progress,
    next_poll_s,
    reconcile_poll_s,
)
from worker.webhooks import record_attempt, record_dead_letter, send_event

log = structlog.get_logger("videoqueue.worker")

# A generation's time is learned only when the poll that saw it done came within this share
# of its age after the poll that saw it running.
HISTORY_BRACKET_SHARE = 0.25
# A stashed file URL whose signature expires within this long is swapped for a fresh one
# before use: a download begun in a link's last seconds may be refused half-way.
URL_EXPIRY_MARGIN_S = 10.0


def _seconds_between(iso: str | None, now: float) -> float:
    if not iso:
        return 0.0
    return now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _timing(s: Settings) -> PollTiming:
    return PollTiming(first_s=s.poll_first_s, factor=s.poll_factor, cap_s=s.poll_cap_s)


# --- submit ---


@app.task(name=names.SUBMIT, base=Step, lanes=SUBMIT_LANES)
def submit(job: Job) -> None:
    """Send the job to its provider once, then start polling it. Its rate token and provider
    slot were taken when its entry was claimed, at the head of its route
    (producer/core/limits.py)."""
    rt = job.rt
    record = job.record
    if record.batch_id and rt.store.batch_cancelled(record.batch_id):
        job.cancel()
        return job.revisit()
    if record.deadline_unix_s is not None and record.past_deadline(_redis_now(rt.store.redis)):
        # Still waiting for a slot (or for its create's retry) at its own deadline.
        return _deadline_exceeded(job)
    if record.provider_task_id is None:
        name = _provider_of(job)
        task = _send(job, name) if name is not None else None
        if name is None or task is None:
            return  # the job has moved on (routed, retried later, or ended)
        record = job.submitted(task, name)
        log.info("submitted", provider=name, provider_task_id=task.id)
        if record.terminal:  # cancelled while the provider answered
            rt.provider(name).cancel(task.id)
    if _reconciles(job):
        job.revisit(reconcile_poll_s(_timing(rt.settings), elapsed_s=0.0,
                                     late_s=rt.history.late_s(record.request)))  # fmt: skip
    else:
        job.revisit(next_poll_s(_timing(rt.settings), polls=0, elapsed_s=0.0,
                                usual_s=rt.history.usual_s(record.request)))  # fmt: skip


def _calls_back(job: Job) -> bool:
    """Whether the job's creates carry a callback URL: VIDEOQUEUE_PUBLIC_URL is set and its
    provider's dialect has a [callback] table."""
    rt = job.rt
    return (
        bool(rt.settings.public_url)
        and rt.provider(job.record.provider).dialect.callback is not None
    )


def _reconciles(job: Job) -> bool:
    """Whether the job's polls are the reconciler (worker/timing.py reconcile_poll_s): its
    provider calls back, and few of its callbacks have gone missing lately."""
    name = job.rt.provider(job.record.provider).name
    return _calls_back(job) and not job.rt.callback_loss.too_high(name)


def _redis_now(client: Any) -> float:
    """Redis's clock (Unix s): one clock for every host's deadlines, the claim's included."""
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def _deadline_exceeded(job: Job) -> None:
    """End a job past its own deadline (the request's deadline_s, counted from enqueue)."""
    deadline_s = job.record.deadline_s or 0.0
    job.fail("deadline_exceeded", f"not finished {deadline_s:g} s after it was enqueued")


def _provider_of(job: Job) -> str | None:
    """The provider the job's create goes to now, the head of its route; None when it had
    no route (given one now, due again at once) or its provider is gone (routed again, or
    failed where its create may have reached that one)."""
    rt = job.rt
    route = rt.limits.route(job.id)
    if route is not None and route[0] in rt.providers:
        return route[0]
    if route is not None and job.record.provider is not None:
        # The providers file changed since the job was routed, and it may only go there.
        job.fail("unknown_provider", f"provider {route[0]!r} is no longer configured")
    else:
        _route(job)
    return None


def _route(job: Job) -> None:
    """Give the job its route (the providers that may take it, in order), due again at once:
    its next claim takes a slot at the first of them with one free."""
    rt = job.rt
    record = job.record
    if record.provider is not None:  # its create may have reached this one: only there
        route = [record.provider]
    else:
        try:
            route = candidates(VideoRequest.model_validate(record.request), rt.settings)
        except InvalidRequest as e:  # the providers changed since it was enqueued
            return job.fail("no_provider", str(e))
    rt.limits.set_route(job.id, route)
    job.revisit()


def _send(job: Job, name: str) -> ProviderTask | None:
    """The task the job's create at provider `name` made; None when none came of it (the job
    is retried later, or ended). A create that may have taken effect there already is sent
    again only as its dialect allows: with the same key, after a lookup by that key found
    nothing, or never (the job ends "uncertain_create")."""
    rt = job.rt
    provider = rt.provider(name)
    api_format = _format(rt.settings, job.record, provider)
    policy = _after_uncertain(rt.settings, job.record, provider)
    # Pinned before the call, in the read that would see a cancel: should we crash before
    # its answer is recorded, the job may only go back to this provider; a job cancelled
    # since its step began sends nothing.
    pin = job.pin(name, resends_safely=policy is UncertainCreate.RESEND,
                  after=lambda r, pipe: rt.limits.set_route(r.id, [name], pipe),
                  price_usd=_price_at(rt.settings, name, job.record))  # fmt: skip
    if pin.sends:
        rt.replicate()  # on the replicas before the create goes (a failover keeps it)
    if pin.sends and job.record.batch_id and rt.store.batch_cancelled(job.record.batch_id):
        # Its batch was cancelled since its step began (the flag is set before the jobs
        # are marked): pinned first, so a cancel that comes later finds it at the provider.
        job.unsent(name)
    if job.record.terminal:  # cancelled before its create was sent
        job.revisit()
        return None
    if pin.sends:
        return _create(job, provider, api_format, pin.resending)
    if policy is UncertainCreate.END:
        _uncertain(job, provider)
        return None
    found = _look_up(job, provider)
    if not isinstance(found, _NotThere):
        return found
    # It never took effect: sent now, with the same key.
    if job.resend(name).terminal:  # cancelled while we looked
        job.revisit()
        return None
    return _create(job, provider, api_format, resending=True)


def _price_at(settings: Settings, name: str, record: JobRecord) -> float | None:
    """A task of the job's cost at provider `name` by its price table (None: no price)."""
    found = next((p for p in providers(settings) if p.name == name), None)
    request = VideoRequest.model_validate(record.request)
    return None if found is None else task_price_usd(found, request)


class _NotThere:
    """A lookup's answer: the provider has no task under the key."""


def _create(
    job: Job, provider: ProviderClient, api_format: ApiFormat, resending: bool
) -> ProviderTask | None:
    """The task the create made; None when it did not (the job retried later, or ended)."""
    request = VideoRequest.model_validate(job.record.request)
    rt = job.rt
    callback = None
    if rt.settings.public_url and provider.dialect.callback is not None:
        # A token of its own for this create: only its hash is stored, and it is never logged.
        token = rt.callbacks.issue(job.id, provider.name, rt.settings.deadline_s + TOKEN_GRACE_S)
        callback = callback_url(rt.settings.public_url, provider.name, token)
    try:
        return provider.create(
            request,
            api_format,
            idempotency_key=job.record.submit_key,
            images=job.rt.images,
            callback_url=callback,
        )
    except RetryableError as e:
        _retry(job, provider, e)
    except PermanentError as e:
        job.attempted(provider.name, AttemptOutcome.FAILED, e.code)
        if resending and provider.dialect.lookup is not None:
            # Kling refuses a repeated external_task_id: its first create took effect after all.
            found = _look_up(job, provider)
            if not isinstance(found, _NotThere):
                return found  # the task, or None: the lookup failed and the job moved on
        job.fail(e.code, str(e))
    return None


def _look_up(job: Job, provider: ProviderClient) -> ProviderTask | _NotThere | None:
    """The task a create that may have taken effect made, found by the key it sent;
    _NotThere when the provider has none; None when the lookup failed (the job is retried
    later, or ended)."""
    record = job.record
    try:
        task = provider.find(record.submit_key)
    except RetryableError as e:
        delay_s = job.rt.retries.submit(record.attempts, e)
        if delay_s is None:
            _uncertain(job, provider, f"looking it up failed {record.attempts} times: {e}")
        else:
            log.info("lookup deferred", provider=provider.name, delay_s=round(delay_s, 2),
                     reason=str(e))  # fmt: skip
            job.revisit(delay_s)
        return None
    except PermanentError as e:
        _uncertain(job, provider, f"looking it up was refused: {e}")
        return None
    if task is None:
        return _NotThere()
    log.info("found by its key", provider=provider.name, provider_task_id=task.id)
    return task


def _uncertain(
    job: Job, provider: ProviderClient, why: str = "", cause: Exception | None = None
) -> None:
    """End a job whose create may have made a task that we cannot find: never sent blindly
    again, which could bill a second one. An operator reconciles with the provider. Without a
    why, the dialect can neither resend safely nor look up (cause: what made it uncertain)."""
    if not why:
        why = f"the {provider.dialect.name} dialect has no idempotency key and no lookup"
        if cause is not None:
            why = f"{why}; {cause}"
    job.fail(
        "uncertain_create",
        f"a create sent to provider {provider.name!r} may have made a task whose id never "
        f"reached us, and it is not sent again ({why}): look for the task of job {job.id} at "
        f"{provider.name!r}",
    )


def _retry(job: Job, provider: ProviderClient, error: RetryableError) -> None:
    """A create that may succeed later: at the next provider at once when it certainly did not
    take effect and no earlier create at this provider may have; else at the same provider
    after a backoff (same Idempotency-Key; where the dialect has none, looked up or ended)."""
    rt = job.rt
    name = provider.name
    attempts = job.record.attempts
    outcome = AttemptOutcome.REFUSED if error.not_taken else AttemptOutcome.UNCERTAIN
    delay_s = rt.retries.submit(attempts, error)
    if delay_s is None:
        # Recorded as it was: an operator reading the record sees where a task may exist.
        job.attempted(name, outcome, error.code)
        return job.fail(error.code, f"gave up after {attempts} attempts: {error}")
    route = candidates(VideoRequest.model_validate(job.record.request), rt.settings)
    later = route[route.index(name) + 1 :] if name in route else []
    # The next provider at once; after the last, the first again after a wait.
    fallback, fallback_delay_s = (later, 0.0) if later else (route, delay_s)

    def next_route(r: JobRecord) -> list[str]:
        return fallback if r.provider is None else [name]

    def after(r: JobRecord, pipe: Any) -> None:
        rt.limits.set_route(r.id, next_route(r), pipe)

    record = job.attempted(name, outcome, error.code, after)
    if record.provider is None:
        delay_s = fallback_delay_s
    elif (
        outcome is AttemptOutcome.UNCERTAIN
        and _after_uncertain(rt.settings, record, provider) is UncertainCreate.END
    ):
        return _uncertain(job, provider, cause=error)
    log.info("submit deferred", provider=name, outcome=outcome.value,
             next_provider=next_route(record)[0], delay_s=round(delay_s, 2),
             reason=str(error))  # fmt: skip
    job.revisit(delay_s)


def _after_uncertain(
    settings: Settings, record: JobRecord, provider: ProviderClient
) -> UncertainCreate:
    """What the job's dialect makes of a create of it that may have taken effect."""
    return provider.dialect.after_uncertain_create(_format(settings, record, provider).value)


def _format(settings: Settings, record: JobRecord, provider: ProviderClient) -> ApiFormat:
    """The router's create format: the request's own, else (one provider) the one recorded at
    enqueue, else the provider's."""
    asked = record.request.get("api_format")
    if asked is None and settings.providers_file is None:
        asked = record.api_format
    return ApiFormat(asked or provider.api_format)


# --- poll ---


class _Ended(Enum):
    """An answer that ended its job."""

    FAILED = "failed"  # the provider failed it, or refused the query for good
    TIMED_OUT = "timed_out"  # past a deadline: its task is cancelled upstream too


@dataclass
class _Observed:
    """What one status answer changes, and when to ask again."""

    answer: ProviderTask | Exception
    elapsed_s: float
    delay_s: float = 0.0
    estimate_s: float | None = None
    duration_s: float | None = None  # the generation's time, once it is done
    called_back: bool | None = None  # done: whether its callback came (where it calls back)

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
        if task.cost_usd is not None:
            record.billing.reported_usd = task.cost_usd
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
    rt = jobs[0].rt
    now = _redis_now(rt.store.redis)
    if rt.settings.public_url:
        # The callbacks that came for these jobs: a placement passes back the mark it saw,
        # and one that came while we asked makes the next poll due now (Schedule.place).
        jobs[0].claim.hastened.update(rt.store.schedule.hastened_marks([j.id for j in jobs]))
    # Asked even past the deadline: a video done since the last poll is paid for.
    answers = dict(zip([job.id for job in jobs], self.each_in_threads(_ask, jobs), strict=True))
    seen = self.each(jobs, lambda job: _observe(job, answers[job.id], now))
    # After the failures are written: a slow or failing cancel must not hold them back.
    timed_out = [job for job in jobs if seen.get(job.id) is _Ended.TIMED_OUT]
    self.each_in_threads(_cancel_upstream, timed_out)
    observed = {job_id: o for job_id, o in seen.items() if isinstance(o, _Observed)}
    if not observed:
        return
    claim = jobs[0].claim

    def after(record: JobRecord, pipe: Any) -> None:
        answer, duration_s = observed[record.id].answer, observed[record.id].duration_s
        claim.place(record.id, record, observed[record.id].delay_s, pipe)
        if isinstance(answer, ProviderTask) and answer.state is TaskState.DONE:
            if answer.video_url:
                rt.store.stash_file_url(record.id, answer.video_url, pipe)
            if duration_s is not None:
                rt.history.record(record.request, duration_s, pipe)
            if (called_back := observed[record.id].called_back) is not None:
                rt.callback_loss.saw(rt.provider(record.provider).name, called_back, pipe)

    # One write for all (a failure here is each observed job's fault: Step's boundary).
    records = rt.store.update_many({job_id: o.apply for job_id, o in observed.items()}, after=after)
    for job in jobs:
        if job.id in observed and job.id in records:
            job.record = records[job.id]
    claim.placed.update(job_id for job_id, r in records.items() if not r.terminal)
    # Cancelled while we asked: left alone by the write, cleaned up (cancelled upstream) here.
    self.each([job for job in jobs if job.id in observed and job.record.terminal], self.clean_up)


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
    try:
        provider = job.rt.provider(job.record.provider)
        return provider.get(
            job.record.provider_task_id or "", _format(job.rt.settings, job.record, provider)
        )
    except Exception as e:  # noqa: BLE001  (handed to the job's own failure boundary)
        return e


def _cancel_upstream(job: Job) -> None:
    """Ask the provider to drop a timed-out job's task, where its dialect can (best effort:
    the job has failed already)."""
    record = job.record
    try:
        cancelled = job.rt.provider(record.provider).cancel(record.provider_task_id or "")
    except Exception as e:  # noqa: BLE001  (nothing is left to fail: the job has ended)
        log.warning("timed-out task not cancelled", error_type=type(e).__name__)
        return
    log.info("timed-out task cancelled" if cancelled else "timed-out task not cancelled")


def _observe(job: Job, answer: ProviderTask | Exception, now: float) -> _Observed | _Ended:
    """What to record and when to poll next, or how the answer ended the job."""
    rt = job.rt
    s = rt.settings
    record = job.record
    elapsed_s = _seconds_between(record.submitted_at, now)
    if isinstance(answer, PermanentError):
        job.fail(answer.code, str(answer))
        return _Ended.FAILED
    if isinstance(answer, Exception) and not isinstance(answer, RetryableError):
        raise answer
    if isinstance(answer, ProviderTask) and answer.state is TaskState.FAILED:
        job.fail(
            answer.error_code or "generation_failed",
            answer.error_message or f"the provider reports {answer.raw_status!r}",
            answer.cost_usd,
        )
        return _Ended.FAILED
    seen = _Observed(answer, elapsed_s)
    done = isinstance(answer, ProviderTask) and answer.state is TaskState.DONE
    if done:
        mark = job.claim.hastened.get(job.id)
        if _calls_back(job):
            seen.called_back = mark is not None
        if mark is not None:  # its callback came then: the end, within a network hop
            seen.duration_s = _seconds_between(record.submitted_at, float(mark))
        else:
            seen.duration_s = _generation_s(record.polled_s, elapsed_s, s.poll_first_s)
        return seen  # finalize is due at once
    hint_s = answer.delay_s if isinstance(answer, RetryableError) else answer.poll_after_s
    if isinstance(answer, ProviderTask):
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
    if record.past_deadline(now):
        _deadline_exceeded(job)
        return _Ended.TIMED_OUT
    if elapsed_s > s.deadline_s:
        job.fail("timeout", f"not finished {s.deadline_s:g} s after submission")
        return _Ended.TIMED_OUT
    if _reconciles(job):
        delay_s = reconcile_poll_s(
            _timing(s), elapsed_s=elapsed_s, late_s=rt.history.late_s(record.request)
        )
    else:
        delay_s = next_poll_s(
            _timing(s),
            polls=record.polls + 1,
            elapsed_s=elapsed_s,
            estimate_s=seen.estimate_s if seen.estimate_s is not None else record.estimate_s,
            usual_s=rt.history.usual_s(record.request),
            hint_s=bounded_hint_s(hint_s, s.poll_cap_s),
        )
    mark = job.claim.hastened.get(job.id)
    if mark is not None and _seconds_between(record.submitted_at, float(mark)) > (
        record.polled_s or 0.0
    ):
        # A callback said it ended, and this poll, the first since, says it has not: a
        # provider whose status lags its callback. Asked once more soon, not a backoff later.
        delay_s = min(delay_s, s.poll_first_s)
    if isinstance(answer, RetryableError) and answer.delay_s is None and record.polled_s:
        # A refused query without a hint is noise in the provider, not news about the job:
        # ask again soon (a share of the time since the last answer) rather than a whole
        # backoff step later, which would land long after an end that fell in between.
        since_s = max(0.0, elapsed_s - record.polled_s)
        delay_s = min(delay_s, max(s.poll_first_s / 4, 0.25 * since_s))
    # Never sleep past a deadline: the last poll lands on it.
    seen.delay_s = min(delay_s, max(0.0, s.deadline_s - elapsed_s) + 0.05)
    if record.deadline_unix_s is not None:
        seen.delay_s = min(seen.delay_s, max(0.0, record.deadline_unix_s - now) + 0.05)
    return seen


# --- finalize ---


@app.task(name=names.FINALIZE, base=Step, lanes=frozenset({Lane.FINALIZE}))
def finalize(job: Job) -> None:
    """Copy the finished MP4 into S3, read its shape, and complete the job.

    The video is paid for by now, so a file host that does not answer is waited out until the
    job's deadline, and a refused URL is asked of the provider again, before the job fails
    "output_unreachable"; bytes that come short or broken are retried for a few rounds, then
    fail it "download_failed" (or "invalid_video"). No wait is a sleep: the job's entry comes
    due again (worker/retries.py says when)."""
    rt = job.rt
    s = rt.settings
    job.count_copy()  # a round of tries; the lease covers the whole round
    try:
        # A killed worker's upload is left open: someone must abort it. (A pool process's
        # first finalize also connects to S3 here, which may be down.)
        rt.sweep_uploads()
    except COPY_FAILURES as e:
        if not storage_outage(e):
            raise
        return _wait_for_storage(job, e)
    key = s.s3_key_template.format(job_id=job.id)
    try:
        upload, info = _copy(job, key)
    except FileUnreachable as e:
        return _unreachable(job, e)
    except FileRefused as e:
        return _refused(job, e)
    except (PermanentError, BlockedUrl, BoundExceeded) as e:
        return job.fail(e.code, str(e))
    except COPY_FAILURES as e:
        return _copy_failed(job, e)
    # Best effort: a poster that cannot be made is recorded as such, never fails the job.
    poster, poster_error = make_poster(rt.s3, s.s3_bucket, key, upload.size_bytes,
                                       object_metadata(job.id, job.record.metadata))  # fmt: skip
    job.complete(
        Output(
            bucket=s.s3_bucket,
            key=key,
            size_bytes=upload.size_bytes,
            sha256=upload.sha256,
            width=info.width,
            height=info.height,
            duration_s=info.duration_s,
            poster=poster,
            poster_error=poster_error,
        )
    )
    rt.store.forget_file_url(job.id)
    log.info("completed", key=key, size_bytes=upload.size_bytes)


def _copy(job: Job, key: str) -> tuple[Upload, VideoInfo]:
    """Stream the provider's file into S3 under key and read its shape, in up to copy_tries
    tries; raises the last try's failure (at once when it is an outage of our own S3, a file
    host that did not answer or a fresh URL refused: another download now would meet the same).

    The URL in hand (stashed by the poll that saw the video done, or by an earlier fresh
    query) is swapped for a fresh one from the provider, without spending a try, when its
    signature says it has expired or the file host refuses it."""
    rt = job.rt
    s = rt.settings
    record = job.record
    url = rt.store.file_url(job.id)
    if url is not None and (expires_at := url_expires_at(url)) is not None:
        url = url if expires_at > time.time() + URL_EXPIRY_MARGIN_S else None
    fresh = False
    tried = 0
    while True:
        if url is None:
            url, fresh = _fresh_file_url(job), True
        try:
            provider = rt.provider(record.provider)
            upload = copy_url_to_s3(rt.http, url, provider.credentials(), rt.s3, key,
                                    object_metadata(record.id, record.metadata), s,
                                    provider=provider.name)  # fmt: skip
            return upload, probe(S3RangeReader(rt.s3, s.s3_bucket, key, upload.size_bytes))
        except FileRefused as e:
            if fresh:
                raise
            log.info("file URL refused; asking for a fresh one", reason=_reason(e))
            url = None  # the stashed URL may have expired: the provider gives a fresh one
        except COPY_FAILURES as e:
            tried += 1
            log.info("copy retried", reason=_reason(e))
            if tried >= rt.retries.copy_tries or storage_outage(e):
                raise


def _unreachable(job: Job, failure: FileUnreachable) -> None:
    """The file host (or the provider, asked for a fresh URL) did not answer: another try
    after a backoff, until the job's deadline, without spending the job's copy rounds."""
    rt = job.rt
    record = job.unreachable()
    if rt.retries.refresh_url(record.fetch_failures):
        rt.store.forget_file_url(job.id)
    delay_s = rt.retries.file_host(record.fetch_failures, job.deadline_at - time.time())
    if delay_s is None:
        return job.fail(
            failure.code,
            f"the video was generated but could not be fetched by the job's deadline "
            f"({record.fetch_failures} tries): {_reason(failure)}",
        )
    log.warning("file host unavailable; copy postponed", reason=_reason(failure),
                tries=record.fetch_failures, delay_s=round(delay_s, 2))  # fmt: skip
    job.revisit(delay_s)


def _refused(job: Job, failure: FileRefused) -> None:
    """The file host refused a fresh URL (or the provider gave none): another fresh URL after
    a wait, a few times (a CDN may not have the file yet), then the job fails."""
    rt = job.rt
    record = job.url_refused()
    rt.store.forget_file_url(job.id)
    delay_s = rt.retries.url_refused(record.url_refusals)
    if delay_s is None:
        return job.fail(
            failure.code,
            f"the video was generated but could not be fetched: {record.url_refusals} fresh "
            f"URLs of it were refused ({_reason(failure)})",
        )
    log.warning("fresh file URL refused; asking again later", reason=_reason(failure),
                delay_s=round(delay_s, 2))  # fmt: skip
    job.revisit(delay_s)


def _copy_failed(job: Job, failure: Exception) -> None:
    """A round of copy tries failed: another round after a backoff, until the job's rounds
    are spent (an outage of our own S3 spends none)."""
    if storage_outage(failure):
        return _wait_for_storage(job, failure)
    job.rt.store.forget_file_url(job.id)
    delay_s = job.rt.retries.copy(job.record.copy_attempts)
    if delay_s is None:
        code = "invalid_video" if isinstance(failure, InvalidVideo) else "download_failed"
        return job.fail(code, f"could not copy the video: {_reason(failure)}")
    job.revisit(delay_s)


def _wait_for_storage(job: Job, failure: Exception) -> None:
    """Our S3 is down: try again later without spending the job's copy attempts.

    An outage of our own bucket says nothing about the provider's file; counted as a failed
    download it would fail every finalizing job, and throw away videos already paid for.
    The wait is bounded by the job's deadline, like the generation.
    """
    delay_s = job.rt.retries.storage_outage(job.deadline_at - time.time())
    if delay_s is None:
        return job.fail("storage_unavailable", f"S3 still failing: {_reason(failure)}")
    job.count_copy(-1)
    log.warning("storage unavailable; copy postponed", reason=_reason(failure))
    job.revisit(delay_s)


def _reason(e: Exception) -> str:
    if isinstance(e, FileNotFetched):
        return str(e)[:300]
    return f"{type(e).__name__}: {str(e)[:300]}"


def _fresh_file_url(job: Job) -> str:
    """The file's URL, asked of the provider now, and stashed for the next tries.

    Raises:
        FileUnreachable: the provider could not be asked (a 5xx, 429, timeout, ...).
        FileRefused: it refused for good, or answered without a URL (the task gone, say).
    """
    task = _ask(job)
    if isinstance(task, RetryableError):
        raise FileUnreachable(f"asking the provider for a fresh file URL: {task}")
    if isinstance(task, PermanentError):
        raise FileRefused(f"asking the provider for a fresh file URL: {task}")
    if isinstance(task, Exception):
        raise task
    if not task.video_url:
        raise FileRefused(f"the provider gave no file URL (status {task.raw_status!r})")
    job.rt.store.stash_file_url(job.id, task.video_url)
    return task.video_url


# --- notify ---


@app.task(name=names.NOTIFY, base=Step, lanes=frozenset({Lane.NOTIFY}))
def notify(job: Job) -> None:
    """Deliver the job's webhook; retry on the configured schedule, then dead-letter."""
    rt = job.rt
    hook = job.record.webhook
    assert hook is not None  # route() sends only jobs with a pending webhook here
    rerun = job.record.reruns
    body_key = rt.store.keys.event_body(job.id, rerun)
    msg_id, result = send_event(
        rt.store, rt.http, rt.settings, job.id, body_key, hook, job.record.public(), rerun
    )
    upcoming = hook.model_copy()
    record_attempt(upcoming, result, rt.retries.webhook_attempts)
    if upcoming.state is WebhookState.DEAD:
        # The letter before the record says dead: a worker that dies between the two leaves
        # a delivery to retry, never a dead webhook that `videoqueue webhooks dead` lacks.
        record_dead_letter(rt.store, job.id, upcoming, rerun)
        log.warning("webhook dead-lettered", msg_id=msg_id, attempts=upcoming.attempts)
    hook = job.delivery_attempted(result)
    delay_s = rt.retries.webhook(hook.attempts, result.retry_after_s)
    job.revisit(delay_s if hook.state is WebhookState.PENDING and delay_s is not None else 0.0)


@app.task(name=names.NOTIFY_BATCH, base=BatchStep, lanes=frozenset({Lane.NOTIFY_BATCH}))
def notify_batch(entry: BatchEntry) -> None:
    """Deliver the batch.completed webhook (scheduled once, when the batch's last job ended)."""
    rt = entry.claim.rt
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
    record_attempt(hook, result, rt.retries.webhook_attempts)
    if hook.state is WebhookState.DEAD:  # the letter first, as for a job's
        record_dead_letter(st, entry.id, hook)
    # One claim holds a batch's entry at a time: a plain write.
    if not st.set_batch_fields(entry.id, {"webhook": hook.model_dump_json()}):
        return _batch_expired(entry)
    delay_s = rt.retries.webhook(hook.attempts, result.retry_after_s)
    if hook.state is WebhookState.PENDING and delay_s is not None:
        return entry.revisit(delay_s)
    entry.done()


def _batch_expired(entry: BatchEntry) -> None:
    """The batch's keys expired (VIDEOQUEUE_RECORD_TTL_S) while its webhook was still retried:
    nothing is left to send nor to record an attempt in, so its entry leaves the schedule."""
    log.warning("batch webhook dropped: the batch's records have expired")
    entry.done()
