"""What the console's pages show, worked out from records (pure: no Redis, no HTTP)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from producer.core.records import (
    AT_PROVIDER,
    TERMINAL,
    BatchRecord,
    JobRecord,
    JobStatus,
    WebhookState,
)

# What an error code means, for a person (the record's message says the rest).
ERROR_WORDS = {
    "download_failed": "The provider finished the video, but copying its file into our "
    "bucket failed every time we tried.",
    "invalid_video": "The provider's file is not a playable MP4.",
    "timeout": "The provider did not finish the video before the deadline.",
    "provider_unavailable": "The provider could not be reached for too long.",
    "no_provider": "No configured provider serves this request.",
    "storage_unavailable": "Our bucket could not be reached for too long.",
    "unsupported_request": "The provider refused the request as something it cannot make.",
    "bad_response": "The provider answered with something we could not read.",
    "task_not_found": "The provider no longer knows the task.",
    "rate_limited": "The provider kept refusing for too many requests.",
    "unknown_provider": "The job names a provider this deployment does not have.",
}


def epoch_s(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def age(iso: str | None, now_s: float) -> str:
    """How long ago, in the largest whole unit ("3 min", "2 h")."""
    then = epoch_s(iso)
    if then is None:
        return "-"
    s = max(0.0, now_s - then)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit}"
    return f"{int(s)} s"


def duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def error_words(record: JobRecord) -> str | None:
    if record.error is None:
        return None
    known = ERROR_WORDS.get(record.error.code)
    return f"{known} ({record.error.message})" if known else record.error.message


def job_actions(record: JobRecord) -> list[tuple[str, str]]:
    """The actions that apply to the job now: (action, button label)."""
    found = []
    if record.status not in TERMINAL:
        found.append(("cancel", "Cancel…"))
    if record.status is JobStatus.FAILED:
        found += [("retry", "Retry…"), ("resubmit", "Retry with a new provider task…")]
    if record.webhook is not None and record.webhook.state is WebhookState.DEAD:
        found.append(("replay", "Replay webhook…"))
    return found


@dataclass(frozen=True)
class Moment:
    """One line of a job's timeline."""

    at: str | None
    what: str
    detail: str = ""
    tone: str = ""  # "", "good", "bad"


def timeline(record: JobRecord, dead_letters: list[dict[str, Any]]) -> list[Moment]:
    """The job's history, from its record (and its dead-lettered webhooks), in order.

    The record keeps every provider attempt and replaced task, and the latest of the rest
    (polls are counted, with the latest progress; the webhook's latest attempt and count).
    """
    m = [Moment(record.created_at, "enqueued", f"tenant {record.tenant}")]
    tried: list[Moment] = []
    for a in record.provider_attempts:
        tone = {"created": "good", "failed": "bad"}.get(a.outcome.value, "")
        tried.append(Moment(a.at, f"create at {a.provider}: {a.outcome.value}", a.code or "", tone))
    for t in record.replaced_tasks:
        how = "cancelled" if t.cancelled else "abandoned"
        tried.append(Moment(t.at, f"task {t.task_id} at {t.provider} replaced ({how})"))
    m.extend(sorted(tried, key=lambda x: x.at or ""))
    if record.submitted_at:
        task = f"task {record.provider_task_id or '-'} at {record.provider or '-'}"
        m.append(Moment(record.submitted_at, "submitted", task))
    if record.polls:
        progress = f", latest progress {record.progress}%" if record.progress is not None else ""
        word = f" ({record.provider_status})" if record.provider_status else ""
        m.append(Moment(None, f"polled {record.polls}×", f"{progress.lstrip(', ')}{word}"))
    if record.copy_attempts:
        m.append(Moment(None, f"copied into the bucket: {record.copy_attempts} attempt(s)"))
    if record.finished_at:
        tone = {JobStatus.COMPLETED: "good", JobStatus.FAILED: "bad"}.get(record.status, "")
        detail = record.error.code if record.error else ""
        m.append(Moment(record.finished_at, record.status.value, detail, tone))
    hook = record.webhook
    if hook is not None and hook.attempts:
        answer = f"HTTP {hook.last_status_code}" if hook.last_status_code else hook.last_error
        tone = {"delivered": "good", "dead": "bad", "gone": "bad"}.get(hook.state.value, "")
        m.append(Moment(hook.last_attempt_at,
                        f"webhook {hook.event_type}: {hook.state.value}, attempt(s): "
                        f"{hook.attempts}", f"last answer: {answer or '-'}", tone))  # fmt: skip
    for letter in dead_letters:
        m.append(Moment(letter.get("last_attempt_at"), f"dead letter {letter['id']}",
                        str(letter.get("last_error") or ""), "bad"))  # fmt: skip
    # In the order things happen to a job; the counted lines sit where they happened.
    return m


@dataclass
class BatchView:
    """A batch's progress: counts by status (for bars), its ETA, its usage."""

    batch: BatchRecord
    bars: list[tuple[str, int]]
    eta: str


def batch_view(batch: BatchRecord, now_s: float) -> BatchView:
    bars = [(s.value, batch.counts.get(s.value, 0)) for s in JobStatus]
    started = epoch_s(batch.created_at) or now_s
    eta = "-"
    if batch.done:
        eta = "done"
    elif batch.ended:
        eta = duration((now_s - started) / batch.ended * (batch.total - batch.ended))
    return BatchView(batch, bars, eta)


@dataclass
class Fleet:
    """Who is busy, over the jobs a window held: per tenant or provider."""

    name: str
    jobs: int = 0
    in_flight: int = 0
    ended: int = 0
    failed: int = 0
    first_s: float | None = None
    last_s: float | None = None
    cap: int | None = None
    budget: str = ""
    rate: str = ""
    spent: str = ""  # from the ledger, where there is one

    @property
    def error_rate(self) -> str:
        return f"{100 * self.failed / self.ended:.0f}%" if self.ended else "-"

    @property
    def per_min(self) -> str:
        if self.first_s is None or self.last_s is None or self.jobs < 2:
            return "-"
        span_s = max(self.last_s - self.first_s, 1.0)
        return f"{self.jobs / span_s * 60:.1f}"


def fleet(records: list[JobRecord], by: str) -> dict[str, Fleet]:
    """Jobs, in flight (at a provider), ended, failed and enqueue rate per tenant or provider."""
    rows: dict[str, Fleet] = {}
    for r in records:
        name = (r.tenant if by == "tenant" else r.provider) or "(not routed yet)"
        row = rows.setdefault(name, Fleet(name))
        row.jobs += 1
        row.in_flight += r.status in AT_PROVIDER
        row.ended += r.status in TERMINAL and r.status is not JobStatus.CANCELLED
        row.failed += r.status is JobStatus.FAILED
        t = epoch_s(r.created_at)
        if t is not None:
            row.first_s = t if row.first_s is None else min(row.first_s, t)
            row.last_s = t if row.last_s is None else max(row.last_s, t)
    return rows


def batches_seen(records: list[JobRecord]) -> list[tuple[str, int]]:
    """The batches a window's jobs belong to, with how many of its jobs it held, newest first."""
    return list(Counter(r.batch_id for r in records if r.batch_id).items())
