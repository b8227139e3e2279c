"""The job a step runs on, and the moves it can make.

A `Job` is a job's record as a step loaded it, with the claim that brought it (the runtime,
the lane, the claim's token). Each transition is a method: it says what it changes in the
record, applies that in one store transaction (re-read and re-applied on a conflict, so the
change reads the freshest record), and keeps the new record. `revisit` and `end` finish the
step: the job's one schedule entry moves to the lane its record calls for (`route`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from producer.core.names import SUBMIT_LANES, Lane, batch_of_member
from producer.core.records import (
    AttemptOutcome,
    ErrorInfo,
    JobRecord,
    JobStatus,
    Output,
    ProviderAttempt,
    WebhookDelivery,
    WebhookState,
    mark_cancelled,
    utcnow_iso,
)
from worker import metrics
from worker.redaction import redact
from worker.webhooks import DeliveryResult, record_attempt

if TYPE_CHECKING:
    from worker.provider import ProviderTask
    from worker.runtime import Runtime

log = structlog.get_logger("videoqueue.worker")

# Lanes whose jobs are at the provider (where a cancelled job is cancelled upstream).
AT_PROVIDER_LANES = SUBMIT_LANES | {Lane.POLL}


def route(record: JobRecord) -> Lane | None:
    """The lane the job's status calls for; None when nothing is left to do for it."""
    if record.status is JobStatus.QUEUED:
        return Lane.SUBMIT
    if record.status in (JobStatus.SUBMITTED, JobStatus.PROCESSING):
        return Lane.POLL
    if record.status is JobStatus.FINALIZING:
        return Lane.FINALIZE
    if record.webhook is not None and record.webhook.state is WebhookState.PENDING:
        return Lane.NOTIFY
    return None


@dataclass
class Claim:
    """One message's claim on its entries: the runtime its step runs with, the lane and the
    claim's token, the records it loaded (for each job's log context), and the entries the
    step has placed since (the failure boundary leaves those alone: they have moved on), and
    the providers' callback marks it read (a placement passes them back: Schedule.place)."""

    rt: Runtime
    lane: Lane
    token: str
    records: dict[str, JobRecord] = field(default_factory=dict)
    placed: set[str] = field(default_factory=set)
    hastened: dict[str, str] = field(default_factory=dict)

    def place(self, job_id: str, record: JobRecord, delay_s: float, pipe: Any) -> None:
        """Queue on pipe: the job's entry to the lane its record calls for, due in delay_s;
        its provider slot kept while the provider generates its video, else given back."""
        rt = self.rt
        lane = route(record)
        rt.store.schedule.place(job_id, lane, delay_s, token=self.token, client=pipe,
                                seen=self.hastened.get(job_id, ""))  # fmt: skip
        if lane is Lane.POLL:
            rt.limits.hold_for_generation(job_id, record.tenant, pipe)
        else:
            rt.limits.release(job_id, record.tenant, pipe)
        if lane not in AT_PROVIDER_LANES:
            rt.limits.forget_route(job_id, pipe)


@dataclass
class Pin:
    """What pinning a job to a provider, just before its create, decided."""

    sends: bool = False  # the create is to be sent (else: looked up or ended)
    resending: bool = False  # an earlier create at this provider may have taken effect


@dataclass
class Job:
    """One job a step runs on: its record, its claim, and the moves it can make."""

    id: str
    record: JobRecord
    claim: Claim

    @property
    def rt(self) -> Runtime:
        return self.claim.rt

    @property
    def lane(self) -> Lane:
        return self.claim.lane

    def update(
        self,
        change: Callable[[JobRecord], bool | None],
        after: Callable[[JobRecord, Any], None] | None = None,
    ) -> JobRecord:
        """Change the record (store.update: returning False writes nothing) and keep the new
        one; after(record, pipe) queues more in the same transaction."""
        self.record = self.rt.store.update(self.id, change, after=after)
        return self.record

    # --- finishing the step ---

    def revisit(self, delay_s: float = 0.0) -> None:
        """Finish this step: the job is next due in delay_s, in the lane its record calls for
        (or leaves the schedule if nothing is left to do)."""
        with self.rt.store.redis.pipeline() as pipe:
            self.claim.place(self.id, self.record, delay_s, pipe)
            pipe.execute()
        self.claim.placed.add(self.id)

    def end(self, change: Callable[[JobRecord], None], event_type: str) -> bool:
        """Apply a terminal change; in the same transaction give back the job's slot and
        schedule its webhook. False if the job had already ended."""
        ended: list[bool] = []

        def apply(record: JobRecord) -> bool:
            ended.clear()  # an update retried on a conflict calls again
            if record.terminal:
                return False
            change(record)
            record.finished_at = utcnow_iso()
            if url := record.request.get("webhook_url"):
                record.webhook = WebhookDelivery(url=url, event_type=event_type)
            ended.append(True)
            return True

        def after(record: JobRecord, pipe: Any) -> None:
            self.claim.place(self.id, record, 0.0, pipe)

        # (The store settles its money and sums its usage into its batch's in the same
        # transaction: store.update_many.)
        self.update(apply, after)
        if not ended:
            self.revisit()
            return False
        self.claim.placed.add(self.id)
        self.rt.replicate()  # its charge on the replicas, as its pin was (a failover keeps it)
        return True

    def fail(self, code: str, message: str, cost_usd: float | None = None) -> None:
        """End the job as failed, with a code and a readable message (redacted: it goes into
        the record and the webhook, and may quote a signed URL or an echoed secret), and what
        the provider's failing answer said its task cost, if it did."""
        message = redact(message)

        def failed(record: JobRecord) -> None:
            record.status = JobStatus.FAILED
            record.error = ErrorInfo(code=str(code), message=message)
            if cost_usd is not None:
                record.billing.reported_usd = cost_usd

        if self.end(failed, "video.failed"):
            metrics.job_failed(str(code))
            log.warning("job failed", code=code, message=message)

    def complete(self, output: Output) -> None:
        """End the job completed, its video in S3 at output."""

        def completed(record: JobRecord) -> None:
            record.status = JobStatus.COMPLETED
            record.output = output
            record.progress = 100

        self.end(completed, "video.completed")

    def cancel(self) -> JobRecord:
        """Cancel the job unless it has ended (its batch was cancelled)."""
        return self.update(mark_cancelled)

    # --- submit ---

    def pin(
        self,
        provider: str,
        resends_safely: bool,
        after: Callable[[JobRecord, Any], None],
        price_usd: float | None = None,
    ) -> Pin:
        """Pin the job to provider just before its create is sent. A cancelled job is left
        alone; a create an earlier worker sent and never recorded an answer to becomes
        uncertain; and where that provider may have a task of this job already, the create is
        sent again only if its dialect resends safely (with the same idempotency key). Each
        pin counts as an attempt. price_usd is a task's cost there by its price table (None:
        it has no price), what the ledger charges should the provider report none."""
        pin = Pin()

        def change(record: JobRecord) -> bool:
            pin.sends = pin.resending = False  # an update retried on a conflict calls again
            if record.terminal:
                return False
            for attempt in record.provider_attempts:
                if attempt.outcome is AttemptOutcome.SENT:  # its worker died before the answer
                    attempt.outcome, attempt.code = AttemptOutcome.UNCERTAIN, "unanswered"
            pin.resending = record.uncertain_provider() == provider
            record.attempts += 1
            record.provider = provider
            record.billing.price_usd = price_usd
            if pin.resending and not resends_safely:
                return True
            record.provider_attempts.append(
                ProviderAttempt(provider=provider, outcome=AttemptOutcome.SENT)
            )
            pin.sends = True
            return True

        self.update(change, after)
        return pin

    def unsent(self, provider: str) -> JobRecord:
        """Cancel a job whose create was pinned and will not be sent after all."""

        def change(record: JobRecord) -> None:
            _settle(record, provider, AttemptOutcome.REFUSED, "cancelled")
            mark_cancelled(record)

        return self.update(change)

    def resend(self, provider: str) -> JobRecord:
        """A lookup found no task: the create is sent again (unless the job has ended)."""

        def change(record: JobRecord) -> bool:
            if record.terminal:
                return False
            record.provider_attempts.append(
                ProviderAttempt(provider=provider, outcome=AttemptOutcome.SENT)
            )
            return True

        return self.update(change)

    def attempted(
        self,
        provider: str,
        outcome: AttemptOutcome,
        code: str | None,
        after: Callable[[JobRecord, Any], None] | None = None,
    ) -> JobRecord:
        """Record what a create at provider came to; one certainly refused frees the job to go
        to another provider, unless an earlier create may have made a task somewhere."""

        def change(record: JobRecord) -> None:
            _settle(record, provider, outcome, code)
            if outcome is AttemptOutcome.REFUSED and record.uncertain_provider() is None:
                record.provider = None

        return self.update(change, after)

    def submitted(self, task: ProviderTask, provider: str) -> JobRecord:
        """The provider made the task: the job is submitted (a job cancelled meanwhile stays
        cancelled, and keeps the task's id, for its cancel upstream)."""

        def change(record: JobRecord) -> None:
            record.provider_task_id = task.id
            record.provider = provider
            _settle(record, provider, AttemptOutcome.CREATED, None)
            record.provider_status = task.raw_status
            if task.cost_usd is not None:
                record.billing.reported_usd = task.cost_usd
            record.submitted_at = record.submitted_at or utcnow_iso()
            if record.status is JobStatus.QUEUED:
                record.status = JobStatus.SUBMITTED

        return self.update(change)

    @property
    def deadline_at(self) -> float:
        """When the job must have ended (Unix seconds): VIDEOQUEUE_DEADLINE_S after its
        submission (its creation, before one), or its own deadline_s if that comes first. The
        steps that wait something out until the deadline (a file host down, our own S3 down)
        read it here."""
        started = self.record.submitted_at or self.record.created_at
        at = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
        own = self.record.deadline_unix_s
        return min(at + self.rt.settings.deadline_s, own if own is not None else math.inf)

    # --- finalize ---

    def count_copy(self, rounds: int = 1) -> JobRecord:
        """Count a round of copy tries (-1: take back one that an S3 outage spent)."""

        def change(record: JobRecord) -> None:
            record.copy_attempts += rounds

        return self.update(change)

    def unreachable(self) -> JobRecord:
        """The round's download met a file host that did not answer (or a provider that could
        not give a fresh URL): counted as such, and the round taken back."""

        def change(record: JobRecord) -> None:
            record.copy_attempts -= 1
            record.fetch_failures += 1

        return self.update(change)

    def url_refused(self) -> JobRecord:
        """The file host refused a fresh file URL: counted as such, and the round taken back."""

        def change(record: JobRecord) -> None:
            record.copy_attempts -= 1
            record.url_refusals += 1

        return self.update(change)

    # --- notify ---

    def delivery_attempted(self, result: DeliveryResult) -> WebhookDelivery:
        """Count one delivery of the job's webhook and move it to its next state (delivered,
        gone, dead once the retry policy's attempts are spent, else still pending)."""

        def change(record: JobRecord) -> None:
            assert record.webhook is not None  # only a job with a webhook is notified
            record_attempt(record.webhook, result, self.rt.retries.webhook_attempts)

        hook = self.update(change).webhook
        assert hook is not None
        return hook

    # --- the failure boundary's ---

    def count_recovery(self) -> JobRecord:
        """A claim of this job's step was found unfinished (its worker died, its message was
        lost)."""

        def change(record: JobRecord) -> None:
            record.recoveries += 1

        return self.update(change)

    def stop_delivering(self, message: str) -> JobRecord:
        """An ended job's webhook step kept failing: its delivery is given up (dead)."""
        return self.update(lambda record: stop_delivering(record.webhook, message))


def _settle(record: JobRecord, provider: str, outcome: AttemptOutcome, code: str | None) -> None:
    """Record a create's outcome in its "sent" entry (a new entry if a crash lost that)."""
    for attempt in reversed(record.provider_attempts):
        if attempt.provider == provider and attempt.outcome is AttemptOutcome.SENT:
            attempt.outcome, attempt.code, attempt.at = outcome, code, utcnow_iso()
            return
    record.provider_attempts.append(ProviderAttempt(provider=provider, outcome=outcome, code=code))


def stop_delivering(hook: WebhookDelivery | None, message: str) -> bool:
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
    claim: Claim

    @property
    def id(self) -> str:
        """The batch's id."""
        return batch_of_member(self.member)

    def revisit(self, delay_s: float) -> None:
        self._place(self.claim.lane, delay_s)

    def done(self) -> None:
        self._place(None, 0.0)

    def _place(self, lane: Lane | None, delay_s: float) -> None:
        self.claim.rt.store.schedule.place(self.member, lane, delay_s, token=self.claim.token)
        self.claim.placed.add(self.member)
