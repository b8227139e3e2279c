"""What every task shares, attached in one place: the claim, the lease, the log context and
the failure boundary.

Every task is a `Step`. Its message carries a claim from the schedule (worker/pump.py): the
entries, the claim's token, the lane, and which entries are recoveries. `Step.__call__`
drops entries a newer claim holds (a stale or redelivered message), keeps the lease alive
while the step runs, loads each job's record and routes it: a job whose status calls for
another lane is handed there, an ended job is cleaned up. Then, for each job, inside one
boundary that binds its id into every log line:

- an exception nobody anticipated is retried with backoff up to fault_max_attempts times in
  a row (a step that completes for the job resets the count), then the job fails with code
  "internal_error" naming the exception type and the step (never its message, which may
  quote a URL or a body), its slot given back and its webhook scheduled in the same
  transaction;
- a claim found unfinished (its worker died, its message was lost) counts as a recovery, and
  too many of them end the job the same way.

Tasks then read as the happy path (worker/tasks.py).
"""

from __future__ import annotations

import contextvars
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from celery import Task
from celery.signals import task_postrun, task_prerun

from producer.core.errors import JobNotFound
from producer.core.names import SUBMIT_LANES, Lane, batch_of_member
from producer.core.records import (
    ErrorInfo,
    JobRecord,
    JobStatus,
    WebhookDelivery,
    WebhookState,
    utcnow_iso,
)
from worker import metrics
from worker.leases import Lease
from worker.redaction import redact
from worker.runtime import runtime
from worker.timing import retry_delay_s
from worker.webhooks import record_dead_letter

log = structlog.get_logger("videoqueue.worker")

T = TypeVar("T")

# Lanes whose jobs are at the provider (where a cancelled job is cancelled upstream).
_AT_PROVIDER = SUBMIT_LANES | {Lane.POLL}


def route(record: JobRecord) -> Lane | None:
    """The lane the job's status calls for; None when nothing is left to do for it."""
    if record.status is JobStatus.QUEUED:
        return Lane.SUBMIT_BULK if record.batch_id else Lane.SUBMIT
    if record.status in (JobStatus.SUBMITTED, JobStatus.PROCESSING):
        return Lane.POLL
    if record.status is JobStatus.FINALIZING:
        return Lane.FINALIZE
    if record.webhook is not None and record.webhook.state is WebhookState.PENDING:
        return Lane.NOTIFY
    return None


def place(job_id: str, record: JobRecord, delay_s: float, token: str, pipe: Any) -> None:
    """Queue on pipe: the job's entry to the lane its record calls for, due in delay_s; its
    provider slot kept while the provider generates its video, else given back."""
    rt = runtime()
    lane = route(record)
    rt.store.schedule.place(job_id, lane, delay_s, token=token, client=pipe)
    if lane is Lane.POLL:
        rt.limits.hold_for_generation(job_id, pipe)
    else:
        rt.limits.release(job_id, pipe)
    if lane not in _AT_PROVIDER:
        rt.limits.forget_route(job_id, pipe)


@dataclass
class Job:
    """One job a step runs on: its record, its claim, and the moves it can make."""

    id: str
    record: JobRecord
    lane: Lane
    token: str

    def update(self, change: Callable[[JobRecord], bool | None]) -> JobRecord:
        """Change the record (store.update) and keep the new one."""
        self.record = runtime().store.update(self.id, change)
        return self.record

    def revisit(self, delay_s: float = 0.0) -> None:
        """Finish this step: the job is next due in delay_s, in the lane its record calls for
        (or leaves the schedule if nothing is left to do)."""
        store = runtime().store
        with store.redis.pipeline() as pipe:
            place(self.id, self.record, delay_s, self.token, pipe)
            pipe.execute()

    def end(self, change: Callable[[JobRecord], None], event_type: str) -> bool:
        """Apply a terminal change; in the same transaction give back the job's slot and
        schedule its webhook. False if the job had already ended."""
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

        def after(record: JobRecord, pipe: Any) -> None:
            place(self.id, record, 0.0, self.token, pipe)
            if record.batch_id and record.usage:
                # Summed in the transaction of the end itself: an end that runs twice finds
                # the job ended and adds nothing.
                runtime().store.add_batch_usage(record.batch_id, record.usage, pipe)

        self.record = runtime().store.update(self.id, apply, after=after)
        if not ended:
            self.revisit()
        return bool(ended)

    def fail(self, code: str, message: str) -> None:
        """End the job as failed, with a code and a readable message (redacted: it goes into
        the record and the webhook, and may quote a signed URL or an echoed secret)."""
        message = redact(message)

        def failed(record: JobRecord) -> None:
            record.status = JobStatus.FAILED
            record.error = ErrorInfo(code=str(code), message=message)

        if self.end(failed, "video.failed"):
            metrics.job_failed(str(code))
            log.warning("job failed", code=code, message=message)


class Step(Task):  # type: ignore[misc]
    """The base of every videoqueue task (see the module's docstring)."""

    # Lanes whose entries this task runs (a submit runs both submit lanes).
    lanes: frozenset[Lane] = frozenset()
    # The task takes all its claim's jobs in one call (polls), not one job per call.
    batched = False
    # The records this task's claim loaded, for the log context of each job's boundary.
    _loaded: dict[str, JobRecord] = {}

    def __call__(
        self, members: list[str], token: str, lane: str, recovered: Sequence[str] = ()
    ) -> None:
        rt = runtime()
        s = rt.settings
        claim = Lease(rt.store.schedule, Lane(lane), token, rt.limits.slot_keys)
        held = claim.held(members)
        self._loaded = {}
        if not held:
            return  # a newer claim holds these entries: this message is stale
        step = self.name.rsplit(".", 1)[-1]
        with (
            metrics.STEP_DURATION.labels(step).time(),
            claim.heartbeat(held, s.lease_s, s.step_timeout_s),
        ):
            self.run_claim(held, Lane(lane), token, frozenset(recovered))

    def run_claim(
        self, members: list[str], lane: Lane, token: str, recovered: frozenset[str]
    ) -> None:
        """Run the step for each claimed entry, one at a time (or all at once if batched)."""
        jobs = []
        for member in members:
            with self.boundary(member, lane, token):
                job = self.load(member, lane, token, member in recovered)
                if job is not None and self.batched:
                    jobs.append(job)
                elif job is not None:
                    self.run(job)
        if jobs:
            with self.boundary([j.id for j in jobs], lane, [j.token for j in jobs]):
                self.run(jobs)

    def load(self, job_id: str, lane: Lane, token: str, recovered: bool) -> Job | None:
        """The job, if this step is what it needs now; else route it and return None."""
        rt = runtime()
        try:
            record = rt.store.get(job_id)
        except JobNotFound:
            # Only a record deleted by hand leaves an entry behind; drop the entry with it.
            rt.store.schedule.place(job_id, None, token=token)
            return None
        job = Job(job_id, record, lane, token)
        self._loaded[job_id] = record
        bind_job(record)
        if recovered:
            record = job.update(_count_recovery)
            log.warning("step recovered", recoveries=record.recoveries, lane=lane.value)
            if record.recoveries > rt.settings.fault_max_attempts:
                self.give_up(job_id, lane, token, f"the {lane.value} step was lost "
                             f"{record.recoveries} times (its worker died or its message "
                             "was lost)")  # fmt: skip
                return None
        if route(record) in self.lanes:
            return job
        if record.terminal:
            self.clean_up(job)
        job.revisit()  # hand the job to the lane its status calls for
        return None

    def clean_up(self, job: Job) -> None:
        """An ended job met in a lane it no longer belongs to: a cancelled job still at the
        provider is cancelled there (where the provider allows it)."""
        record = job.record
        at_provider = record.provider_task_id and job.lane in _AT_PROVIDER
        if record.status is JobStatus.CANCELLED and at_provider:
            runtime().provider(record.provider).cancel(record.provider_task_id or "")

    @contextmanager
    def boundary(
        self, member: str | list[str], lane: Lane, token: str | list[str]
    ) -> Iterator[None]:
        """Bind the job (or jobs) into the log context; turn an unexpected exception into a
        retry with backoff, then an "internal_error" failure, for each of them."""
        members = [member] if isinstance(member, str) else member
        tokens = [token] * len(members) if isinstance(token, str) else token
        with self.log_context(members):
            try:
                yield
            except Exception as e:  # the failure boundary: every task's, in one place
                for m, t in zip(members, tokens, strict=True):
                    self.on_fault(m, lane, t, e)

    @contextmanager
    def log_context(self, members: list[str]) -> Iterator[None]:
        """Bind the step and the job (or how many jobs) into every line logged inside."""
        bound = {"job_id": members[0]} if len(members) == 1 else {"jobs": len(members)}
        with structlog.contextvars.bound_contextvars(**bound, step=self.name):
            if len(members) == 1 and (record := self._loaded.get(members[0])) is not None:
                bind_job(record)
            try:
                yield
            finally:
                structlog.contextvars.unbind_contextvars(*_JOB_CONTEXT)

    def each_in_threads(self, work: Callable[[Job], T], jobs: list[Job]) -> list[T]:
        """work(job) for every job at once, on the runtime's threads, each in its job's log
        context: a thread starts with an empty one, and its lines (the provider client's,
        httpx's) would name no job."""
        contexts = []
        for job in jobs:
            with self.log_context([job.id]):
                contexts.append(contextvars.copy_context())
        return list(runtime().pool.map(lambda c, job: c.run(work, job), contexts, jobs))

    def on_fault(self, member: str, lane: Lane, token: str, error: Exception) -> None:
        rt = runtime()
        s = rt.settings
        where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        log.error(
            "unexpected exception",
            error_type=type(error).__name__,
            at=f"{where.filename.rsplit('/', 2)[-1]}:{where.lineno}" if where else None,
        )
        try:
            faults = rt.store.schedule.count_fault(member)
            if faults < s.fault_max_attempts:
                delay_s = retry_delay_s(faults, s.retry_base_s, s.retry_cap_s)
                rt.store.schedule.place(
                    member, lane, max(delay_s, 0.1), token=token, keep_faults=True
                )
                return
            self.give_up(member, lane, token, f"unexpected {type(error).__name__} in the "
                         f"{self.name.rsplit('.', 1)[-1]} step ({faults} times)")  # fmt: skip
        except Exception as e:  # Redis itself is down: the lease brings the job back
            log.error("could not record a fault", error_type=type(e).__name__)

    def give_up(self, member: str, lane: Lane, token: str, message: str) -> None:
        """End the entry's job for good after too many faults."""
        job = Job(member, runtime().store.get(member), lane, token)
        if job.record.terminal:  # it is its webhook that keeps failing: stop delivering it
            record = job.update(lambda r: _stop_delivering(r.webhook, message))
            _dead_letter(member, record.webhook, record.reruns)
            job.revisit()
            return
        job.fail("internal_error", message)


# What the log context says about the job a step handles, besides its id.
_JOB_CONTEXT = ("batch_id", "provider", "provider_task_id")


def bind_job(record: JobRecord) -> None:
    """Bind the job's batch and provider task into every log line until its boundary ends."""
    known = {"batch_id": record.batch_id, "provider": record.provider,
             "provider_task_id": record.provider_task_id}  # fmt: skip
    structlog.contextvars.bind_contextvars(**{k: v for k, v in known.items() if v})


@task_prerun.connect
def _bind_task(sender: Any = None, args: Any = None, **_: Any) -> None:
    """For the whole of a task on one entry (Celery's own lines about it included), the
    entry's id is in the log context: a job's, or a batch's for batch steps."""
    structlog.contextvars.clear_contextvars()
    if isinstance(sender, Step) and args and isinstance(args[0], list) and len(args[0]) == 1:
        if isinstance(sender, BatchStep):
            structlog.contextvars.bind_contextvars(batch_id=batch_of_member(args[0][0]))
        else:
            structlog.contextvars.bind_contextvars(job_id=args[0][0])


@task_postrun.connect
def _unbind_task(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


def _count_recovery(record: JobRecord) -> None:
    record.recoveries += 1


def _dead_letter(owner_id: str, hook: WebhookDelivery | None, rerun: int = 0) -> None:
    """Keep a webhook given up on in the dead letters, where `videoqueue webhooks` finds it."""
    if hook is not None and hook.state is WebhookState.DEAD:
        record_dead_letter(runtime().store, owner_id, hook, rerun)


def _stop_delivering(hook: WebhookDelivery | None, message: str) -> bool:
    """Mark a pending webhook dead after its step kept failing; False if it was not pending."""
    if hook is None or hook.state is not WebhookState.PENDING:
        return False
    hook.state = WebhookState.DEAD
    hook.last_error = f"internal_error: {message}"
    return True


@dataclass
class BatchEntry:
    """A batch's schedule entry (its batch.completed webhook), as a step runs on it."""

    member: str  # in the schedule, the leases and the faults (names.batch_member)
    lane: Lane
    token: str

    @property
    def id(self) -> str:
        """The batch's id."""
        return batch_of_member(self.member)

    def revisit(self, delay_s: float) -> None:
        runtime().store.schedule.place(self.member, self.lane, delay_s, token=self.token)

    def done(self) -> None:
        runtime().store.schedule.place(self.member, None, token=self.token)


class BatchStep(Step):
    """The base of tasks whose entries are batches, not jobs."""

    def load(  # type: ignore[override]
        self, member: str, lane: Lane, token: str, recovered: bool
    ) -> BatchEntry | None:
        rt = runtime()
        if recovered:  # a batch has no record to count in: its entry's faults count it
            lost = rt.store.schedule.count_fault(member)
            if lost >= rt.settings.fault_max_attempts:
                self.give_up(member, lane, token, f"the {lane.value} step was lost {lost} times")
                return None
        return BatchEntry(member, lane, token)

    def give_up(self, member: str, lane: Lane, token: str, message: str) -> None:
        st = runtime().store
        entry = BatchEntry(member, lane, token)
        try:
            hook = st.get_batch(entry.id, with_jobs=False).webhook
        except JobNotFound:  # expired: nothing is left to mark
            hook = None
        if (
            hook is not None
            and _stop_delivering(hook, message)
            and st.set_batch_fields(entry.id, {"webhook": hook.model_dump_json()})
        ):
            _dead_letter(entry.id, hook)
        entry.done()
