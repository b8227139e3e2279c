"""What every task shares, attached in one place: the claim, the lease, the log context and
the failure boundary.

Every task is a `Step`. Its message carries a claim from the schedule (worker/pump.py): the
entries, the claim's token, the lane, and which entries are recoveries. `Step.__call__`
drops entries a newer claim holds (a stale or redelivered message), keeps the lease alive
while the step runs, loads each job's record and routes it: a job whose status calls for
another lane is handed there, an ended job is cleaned up. Then, for each job (or for a
poll's jobs together), inside one boundary that binds the job's id into every log line:

- an exception nobody anticipated is retried with backoff up to fault_max_attempts times in
  a row (a step that completes for the job resets the count), then the job fails with code
  "internal_error" naming the exception type and the step (never its message, which may
  quote a URL or a body), its slot given back and its webhook scheduled in the same
  transaction; a job the step had already moved on (placed in the schedule) is left alone;
- a claim found unfinished (its worker died, its message was lost) counts as a recovery, and
  too many of them end the job the same way.

When to retry and when to give up is the retry policy's (worker/retries.py). Tasks then read
as the happy path (worker/tasks.py), the moves of a job being its methods (worker/job.py).
"""

from __future__ import annotations

import contextvars
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import structlog
from celery import Task
from celery.signals import task_postrun, task_prerun

from producer.core.errors import JobNotFound
from producer.core.names import Lane, batch_of_member
from producer.core.records import JobRecord, JobStatus, WebhookDelivery, WebhookState
from worker import metrics
from worker.job import AT_PROVIDER_LANES, BatchEntry, Claim, Job, route, stop_delivering
from worker.leases import Lease
from worker.runtime import Runtime, runtime
from worker.webhooks import record_dead_letter

log = structlog.get_logger("videoqueue.worker")

T = TypeVar("T")


class Step(Task):  # type: ignore[misc]
    """The base of every videoqueue task (see the module's docstring)."""

    # Lanes whose entries this task runs (a submit runs both submit lanes).
    lanes: frozenset[Lane] = frozenset()
    # The task takes all its claim's jobs in one call (polls), not one job per call.
    batched = False

    def __call__(
        self, members: list[str], token: str, lane: str, recovered: Sequence[str] = ()
    ) -> None:
        rt = runtime()  # the process's: built at its first task, after the pool's fork
        s = rt.settings
        claim = Claim(rt, Lane(lane), token)
        lease = Lease(rt.store.schedule, claim.lane, token, rt.limits.slot_keys)
        held = lease.held(members)
        if not held:
            return  # a newer claim holds these entries: this message is stale
        with (
            metrics.STEP_DURATION.labels(self.name.rsplit(".", 1)[-1]).time(),
            lease.heartbeat(held, s.lease_s, s.step_timeout_s),
        ):
            self.run_claim(claim, held, frozenset(recovered))

    def run_claim(self, claim: Claim, members: list[str], recovered: frozenset[str]) -> None:
        """Run the step for each claimed entry, one at a time (or all at once if batched)."""
        jobs = []
        for member in members:
            with self.boundary(claim, [member]):
                job = self.load(claim, member, member in recovered)
                if job is not None and self.batched:
                    jobs.append(job)
                elif job is not None:
                    self.run(job)
        if jobs:
            with self.boundary(claim, [j.id for j in jobs]):
                self.run(jobs)

    def load(self, claim: Claim, job_id: str, recovered: bool) -> Job | None:
        """The job, if this step is what it needs now; else route it and return None."""
        rt = claim.rt
        try:
            record = rt.store.get(job_id)
        except JobNotFound:
            # Only a record deleted by hand leaves an entry behind; drop the entry with it.
            rt.store.schedule.place(job_id, None, token=claim.token)
            claim.placed.add(job_id)
            return None
        job = Job(job_id, record, claim)
        claim.records[job_id] = record
        bind_job(record)
        if recovered:
            record = job.count_recovery()
            log.warning("step recovered", recoveries=record.recoveries, lane=claim.lane.value)
            if not rt.retries.lost_step(record.recoveries):
                self.give_up(claim, job_id, f"the {claim.lane.value} step was lost "
                             f"{record.recoveries} times (its worker died or its message "
                             "was lost)")  # fmt: skip
                return None
        if route(record) in self.lanes:
            return job
        self.clean_up(job)
        return None

    def clean_up(self, job: Job) -> None:
        """A job met in a lane it no longer belongs to goes where its status calls for; a
        cancelled job still at the provider is cancelled there first (where the provider
        allows it)."""
        record = job.record
        at_provider = record.provider_task_id and job.lane in AT_PROVIDER_LANES
        if record.status is JobStatus.CANCELLED and at_provider:
            job.rt.provider(record.provider).cancel(record.provider_task_id or "")
        job.revisit()

    @contextmanager
    def boundary(self, claim: Claim, members: list[str]) -> Iterator[None]:
        """Bind the job (or jobs) into the log context; turn an unexpected exception into a
        retry with backoff, then an "internal_error" failure, for each of them that the step
        has not moved on yet."""
        with self.log_context(claim, members):
            try:
                yield
            except Exception as e:  # the failure boundary: every task's, in one place
                for member in members:
                    if member not in claim.placed:
                        self.on_fault(claim, member, e)

    def each(self, jobs: Sequence[Job], work: Callable[[Job], T]) -> dict[str, T]:
        """work(job) for each job, each inside its own boundary: one job's exception is
        that job's fault only. Returns the results of the jobs whose work returned."""
        results: dict[str, T] = {}
        for job in jobs:
            with self.boundary(job.claim, [job.id]):
                results[job.id] = work(job)
        return results

    @contextmanager
    def log_context(self, claim: Claim, members: list[str]) -> Iterator[None]:
        """Bind the step and the job (or how many jobs) into every line logged inside."""
        bound = {"job_id": members[0]} if len(members) == 1 else {"jobs": len(members)}
        with structlog.contextvars.bound_contextvars(**bound, step=self.name):
            if len(members) == 1 and (record := claim.records.get(members[0])) is not None:
                bind_job(record)
            try:
                yield
            finally:
                structlog.contextvars.unbind_contextvars(*_JOB_CONTEXT)

    def each_in_threads(self, work: Callable[[Job], T], jobs: list[Job]) -> list[T]:
        """work(job) for every job at once, on the runtime's threads, each in its job's log
        context: a thread starts with an empty one, and its lines (the provider client's,
        httpx's) would name no job."""
        if not jobs:
            return []
        contexts = []
        for job in jobs:
            with self.log_context(job.claim, [job.id]):
                contexts.append(contextvars.copy_context())
        pool = jobs[0].rt.pool
        return list(pool.map(lambda c, job: c.run(work, job), contexts, jobs))

    def on_fault(self, claim: Claim, member: str, error: Exception) -> None:
        """An unexpected exception in the member's step: retried later, or the end of it."""
        rt = claim.rt
        where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        log.error(
            "unexpected exception",
            error_type=type(error).__name__,
            at=f"{where.filename.rsplit('/', 2)[-1]}:{where.lineno}" if where else None,
        )
        try:
            faults = rt.store.schedule.count_fault(member)
            delay_s = rt.retries.fault(faults)
            if delay_s is not None:
                rt.store.schedule.place(
                    member, claim.lane, delay_s, token=claim.token, keep_faults=True
                )
                claim.placed.add(member)
                return
            self.give_up(claim, member, f"unexpected {type(error).__name__} in the "
                         f"{self.name.rsplit('.', 1)[-1]} step ({faults} times)")  # fmt: skip
        except Exception as e:  # Redis itself is down: the lease brings the job back
            log.error("could not record a fault", error_type=type(e).__name__)

    def give_up(self, claim: Claim, member: str, message: str) -> None:
        """End the entry's job for good after too many faults."""
        job = Job(member, claim.rt.store.get(member), claim)
        if job.record.terminal:  # it is its webhook that keeps failing: stop delivering it
            record = job.stop_delivering(message)
            _dead_letter(claim.rt, member, record.webhook, record.reruns)
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


def _dead_letter(rt: Runtime, owner_id: str, hook: WebhookDelivery | None, rerun: int = 0) -> None:
    """Keep a webhook given up on in the dead letters, where `videoqueue webhooks` finds it."""
    if hook is not None and hook.state is WebhookState.DEAD:
        record_dead_letter(rt.store, owner_id, hook, rerun)


class BatchStep(Step):
    """The base of tasks whose entries are batches, not jobs."""

    def load(  # type: ignore[override]
        self, claim: Claim, member: str, recovered: bool
    ) -> BatchEntry | None:
        rt = claim.rt
        # A batch has no record to count a recovery in: it counts as one of its entry's faults.
        if recovered:
            lost = rt.store.schedule.count_fault(member)
            if rt.retries.fault(lost) is None:
                self.give_up(claim, member, f"the {claim.lane.value} step was lost {lost} times")
                return None
        return BatchEntry(member, claim)

    def give_up(self, claim: Claim, member: str, message: str) -> None:
        st = claim.rt.store
        entry = BatchEntry(member, claim)
        try:
            hook = st.get_batch(entry.id, with_jobs=False).webhook
        except JobNotFound:  # expired: nothing is left to mark
            hook = None
        if (
            hook is not None
            and stop_delivering(hook, message)
            and st.set_batch_fields(entry.id, {"webhook": hook.model_dump_json()})
        ):
            _dead_letter(claim.rt, entry.id, hook)
        entry.done()
