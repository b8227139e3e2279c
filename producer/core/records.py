"""What videoqueue knows about a job: its status and its record."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from producer.core.tenants import DEFAULT_TENANT


class JobStatus(StrEnum):
    """Where a job is in the pipeline."""

    QUEUED = "queued"  # enqueued, not yet accepted by the provider
    SUBMITTED = "submitted"  # the provider accepted it; not yet seen running
    PROCESSING = "processing"  # the provider is generating it
    FINALIZING = "finalizing"  # the MP4 is being copied into S3
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset(set(JobStatus) - TERMINAL)
# At the provider: a generation that counts against its concurrency cap.
AT_PROVIDER = frozenset({JobStatus.SUBMITTED, JobStatus.PROCESSING})


class WebhookState(StrEnum):
    """Delivery of the job's webhook."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # every attempt failed: the dead-letter state
    GONE = "gone"  # the receiver answered 410 Gone; we stopped


def iso(moment: datetime) -> str:
    """moment, as ISO 8601 UTC with a Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow_iso() -> str:
    """Now, as ISO 8601 UTC with a Z."""
    return iso(datetime.now(UTC))


class Poster(BaseModel):
    """A frame of the finished video, stored as a small image beside the MP4 (worker/poster.py)."""

    bucket: str
    key: str
    size_bytes: int
    width: int = Field(description="Pixels of the image (not of the video).")
    height: int = Field(description="Pixels of the image (not of the video).")
    content_type: str = "image/jpeg"


class Output(BaseModel):
    """Where the finished MP4 landed, and what it is."""

    bucket: str
    key: str
    size_bytes: int
    sha256: str
    content_type: str = "video/mp4"
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    # Best effort: a video that decodes for its shape but not for a frame still completes,
    # with no poster and the reason why.
    poster: Poster | None = Field(
        default=None,
        description="The poster frame (GET /v1/videos/{id}/content?variant=thumbnail); null "
        "when none could be made, poster_error says why.",
    )
    poster_error: str | None = Field(
        default=None, description="Why the video has no poster frame; null when it has one."
    )


class ErrorInfo(BaseModel):
    """Why a job failed: a stable code and a readable message."""

    code: str
    message: str


class WebhookDelivery(BaseModel):
    """How the job's webhook is doing."""

    url: str
    event_type: str
    state: WebhookState = WebhookState.PENDING
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    last_attempt_at: str | None = None


class AttemptOutcome(StrEnum):
    """What one create at one provider came to."""

    CREATED = "created"  # the provider made the task
    REFUSED = "refused"  # certainly not taken (unreachable, 429, a refusal): the next provider
    UNCERTAIN = "uncertain"  # may have been taken (timeout, 5xx): the same provider again
    FAILED = "failed"  # refused for good
    # On its way: written just before the create is sent, replaced by its outcome. One found
    # by a later submit is a create whose worker died before its answer was recorded.
    SENT = "sent"


class ProviderAttempt(BaseModel):
    """One create sent to one provider (named, never its key)."""

    provider: str
    outcome: AttemptOutcome
    code: str | None = None
    at: str = Field(default_factory=utcnow_iso)


class ReplacedTask(BaseModel):
    """A provider task an operator's `retry --resubmit` replaced with a new one."""

    provider: str
    task_id: str
    # Cancelled upstream; False: abandoned (its dialect cannot cancel, or the cancel failed).
    cancelled: bool
    at: str = Field(default_factory=utcnow_iso)


class Cost(BaseModel):
    """What a job costs its tenant, in US dollars (producer/core/ledger.py; README "Budgets
    and the ledger")."""

    reserved_usd: float = Field(
        default=0.0,
        description="Held against the tenant's budget while the job runs: its estimate from "
        "the price table (the highest of the providers it may go to); 0 once it ended.",
    )
    charged_usd: float = Field(
        default=0.0,
        description="What its provider tasks cost, settled when it ends: the provider's "
        "reported cost where its dialect reads one, else the price table's; 0 for a job that "
        "never reached a provider.",
    )


class Billing(BaseModel):
    """The ledger's notes on the job's current provider task (producer/core/ledger.py): what
    settling it charges. Not public."""

    # What this run reserved at enqueue (or its retry), kept after the reservation ends.
    estimate_usd: float = 0.0
    # The task's cost by the price table at the provider it was pinned to (None: no price).
    price_usd: float | None = None
    # The provider's own figure for the task, the latest it reported (None: none reported).
    reported_usd: float | None = None
    # What of the task's cost the ledger has charged already.
    charged_usd: float = 0.0
    # The task's usage already summed into its batch's (the rest is added at its next end).
    usage_counted: dict[str, float] = Field(default_factory=dict)


def _schema_leaves_optional(*fields: str) -> Callable[[dict[str, Any]], None]:
    """For a public model's JSON Schema: every field is in every dump (so required) but
    `fields`, which webhooks' `data` leaves out (worker/webhooks.py, worker/tasks.py)."""

    def edit(schema: dict[str, Any]) -> None:
        schema["required"] = [f for f in schema["required"] if f not in fields]

    return edit


class PublicJob(BaseModel):
    """A job as users see it: `videoqueue status --json`, `producer.get(...).public()`,
    webhooks' `data`. Its JSON Schema is published in producer/core/schema/job.schema.json;
    these fields keep their names and meanings (the README's "The job record")."""

    model_config = ConfigDict(
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_schema_leaves_optional("webhook"),
    )

    # The descriptions are the published schema's documentation of each field.
    id: str = Field(description="The job id.")
    status: JobStatus = Field(default=JobStatus.QUEUED, description="Where the job is.")
    request: dict[str, Any] = Field(description="The validated request, as enqueued.")
    metadata: dict[str, str] = Field(
        default_factory=dict, description="The caller's metadata, exactly as given."
    )
    provider_task_id: str | None = Field(
        default=None, description="The provider's task id, once it accepted the job."
    )
    output: Output | None = Field(
        default=None, description="Where the finished MP4 landed, once completed."
    )
    error: ErrorInfo | None = Field(default=None, description="Why the job failed.")
    attempts: int = Field(
        default=0,
        description="Calls made to the provider to submit this job (1 when all went well).",
    )
    created_at: str = Field(default_factory=utcnow_iso, description="ISO 8601 UTC, with a Z.")
    updated_at: str = Field(default_factory=utcnow_iso, description="ISO 8601 UTC, with a Z.")
    api_format: str | None = Field(
        default=None, description="openai (POST /v1/videos) or unified (POST /v1/video/create)."
    )
    progress: int | None = Field(default=None, description="The provider's latest, 0-100.")
    provider_status: str | None = Field(
        default=None, description="The provider's latest status word."
    )
    submitted_at: str | None = Field(default=None, description="ISO 8601 UTC, with a Z.")
    finished_at: str | None = Field(default=None, description="ISO 8601 UTC, with a Z.")
    batch_id: str | None = Field(default=None, description="The job's batch, if any.")
    tenant: str = Field(
        default=DEFAULT_TENANT,
        description='Who the job belongs to ("default" when enqueued without one): an API key '
        "sees its own tenant's jobs only.",
    )
    webhook: WebhookDelivery | None = Field(
        default=None,
        description="How the job's webhook is doing; left out of webhook bodies (it changes "
        "per attempt, the event does not).",
    )
    resubmits: int = Field(
        default=0,
        description="Times an operator asked for a new provider task "
        "(`videoqueue retry --resubmit`).",
    )
    replaced_tasks: list[ReplacedTask] = Field(
        default_factory=list, description="The provider tasks those resubmissions replaced."
    )
    usage: dict[str, float] | None = Field(
        default=None,
        description="What the provider last reported it charged or counted, where its dialect "
        "says (usage.cost, billed seconds, tokens, ...).",
    )
    provider: str | None = Field(
        default=None,
        description='The provider (its name in the providers file; "default" without one) the '
        "job's task was created at, or its create may have reached: every poll, cancel and "
        "download goes there.",
    )
    provider_attempts: list[ProviderAttempt] = Field(
        default_factory=list, description="Every create sent, wherever it went, in order."
    )
    cost: Cost = Field(
        default_factory=Cost,
        description="What the job costs its tenant (reserved while it runs, charged when it "
        "ends), in US dollars.",
    )
    priority: int = Field(
        default=0,
        description="Its place among its tenant's jobs waiting for a provider slot, higher "
        "first: the request's priority, else 0 for a single job and -1 for a batch's.",
    )
    deadline_s: float | None = Field(
        default=None,
        description="The request's deadline_s: seconds after created_at by which the job must "
        'have finished, or it fails "deadline_exceeded".',
    )
    deadline_at: str | None = Field(
        default=None, description="created_at plus deadline_s: ISO 8601 UTC, with a Z."
    )

    def public(self) -> dict[str, Any]:
        """The public job as JSON-ready data (webhook `data`, status --json): none of the
        scheduler's fields a JobRecord adds."""
        return self.model_dump(mode="json", include=set(PublicJob.model_fields))


class JobRecord(PublicJob):
    """A job as the store keeps it: the public job and what the scheduler counts for it
    (`videoqueue status --debug` shows these; they may change in any release)."""

    # Status queries sent to the provider.
    polls: int = 0
    # Times a step of this job was claimed again because its last claim never finished
    # (its worker died, its message was lost).
    recoveries: int = 0
    # When (seconds after submission) the provider is expected to finish, and the seconds
    # after submission at which `progress` was reported: the poll schedule aims by them.
    estimate_s: float | None = None
    progress_s: float | None = None
    # Seconds after submission of the latest status query.
    polled_s: float | None = None
    # Rounds of tries to copy the finished video into S3 (a round that met a file host that
    # did not answer, or refused a fresh URL, or our own S3 down, is taken back).
    copy_attempts: int = 0
    # Downloads the provider's file host did not answer (no connection, a timeout, a 5xx) or
    # the provider could not be asked for a fresh file URL: waited out until the deadline.
    fetch_failures: int = 0
    # Fresh file URLs (just given by the provider) the file host refused (a 403, 404, 410...).
    url_refusals: int = 0
    # Times an operator ran the failed job again (`videoqueue retry`, with or without
    # --resubmit): each run ends in a new event, with a webhook-id of its own.
    reruns: int = 0
    # The ledger's notes on its current provider task (producer/core/ledger.py).
    billing: Billing = Field(default_factory=Billing)
    # deadline_at as Unix seconds, for the schedule's scripts (lua/claim_submit.lua).
    deadline_unix_s: float | None = None

    def past_deadline(self, now: float) -> bool:
        """Whether the job's own deadline (deadline_s) has passed at now (Unix seconds)."""
        return self.deadline_unix_s is not None and now >= self.deadline_unix_s

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def uncertain_provider(self) -> str | None:
        """The provider a create of this submission may have made a task at that we have no id
        of (an answer that never came or said nothing for sure), if any: the job may go to no
        other provider, or it could be billed twice. A task created since settles it."""
        for attempt in reversed(self.provider_attempts):
            if attempt.outcome is AttemptOutcome.CREATED:
                return None
            if attempt.outcome in (AttemptOutcome.UNCERTAIN, AttemptOutcome.SENT):
                return attempt.provider
        return None

    @property
    def submit_key(self) -> str:
        """The Idempotency-Key the provider sees: the job id, new for each resubmission (the
        provider would answer a repeated key with the task it already made)."""
        return self.id if not self.resubmits else f"{self.id}.r{self.resubmits}"


def schedule_fields(
    priority: int | None, deadline_s: float | None, *, in_batch: bool, now: datetime
) -> dict[str, Any]:
    """A new record's priority (the request's, else the default of its kind) and deadline
    fields (deadline_s counted from now, its created_at)."""
    fields: dict[str, Any] = {"priority": priority if priority is not None else -in_batch}
    if deadline_s is not None:
        at = now + timedelta(seconds=deadline_s)
        fields.update(deadline_s=deadline_s, deadline_unix_s=round(at.timestamp(), 3),
                      deadline_at=iso(at))  # fmt: skip
    return fields


def mark_cancelled(record: JobRecord) -> bool:
    """A store.update change: cancel the job unless it has ended."""
    if record.status in TERMINAL:
        return False
    record.status = JobStatus.CANCELLED
    record.finished_at = utcnow_iso()
    return True


class BatchState(StrEnum):
    """Where a batch's writing stands (see producer/batches.py)."""

    STAGING = "staging"
    RELEASED = "released"


class BatchRecord(BaseModel):
    """A batch of jobs enqueued together, as `videoqueue batch-status --json` prints it and
    its webhook carries it (schema: producer/core/schema/batch.schema.json)."""

    model_config = ConfigDict(
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_schema_leaves_optional("webhook", "job_ids"),
    )

    id: str
    total: int
    counts: dict[str, int]
    ended: int
    created_at: str
    finished_at: str | None = None
    cancelled: bool = False
    job_ids: list[str] = Field(default_factory=list)
    # Request index -> the earlier job that already held the item's idempotency key.
    deduplicated: dict[str, str] = Field(default_factory=dict)
    # staging: being written, nothing of it runs yet; released: every job scheduled.
    state: BatchState = BatchState.RELEASED
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook: WebhookDelivery | None = None
    # The usage its ended jobs reported, summed field by field (JobRecord.usage).
    usage: dict[str, float] = Field(default_factory=dict)
    # Who the batch (and each of its jobs) belongs to.
    tenant: str = DEFAULT_TENANT

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    @property
    def failed(self) -> int:
        return self.counts.get(JobStatus.FAILED.value, 0)

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
