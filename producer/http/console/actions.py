"""The operator's actions from the console: what each will do (planned and counted before it
is confirmed), then doing it through the same verbs and commands as the CLI.

Cancel is the producer's verb. Retry, retry with a new provider task and webhook replay are
`videoqueue retry` and `videoqueue webhooks replay` (ops/admin.py), imported on first use:
they ask the provider what became of a task and deliver a webhook, so the service loads that
code only when an operator asks for one of them, never to serve the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from producer.batches import cancel_batch
from producer.core.errors import JobNotFound, OperationRefused, VideoqueueError
from producer.core.keys import Principal
from producer.core.records import ACTIVE, JobStatus
from producer.core.scan import JobScan
from producer.core.settings import Settings
from producer.core.store import store
from producer.http.console import filters
from producer.jobs import cancel

ACTIONS = {
    "cancel": "Cancel this job",
    "retry": "Retry this failed job (same provider task where it has one)",
    "resubmit": "Retry this failed job with a new provider task",
    "replay": "Replay this job's dead-lettered webhook",
    "cancel_batch": "Cancel every unfinished job of this batch",
    "bulk_retry": "Retry every failed job this filter matches",
    "bulk_cancel": "Cancel every unfinished job this filter matches",
}
# The most jobs one bulk action touches, and the index entries read to find them.
BULK_MAX = 1000
BULK_WINDOW = 20_000


@dataclass
class Plan:
    """What a confirmed action will do: its words, its targets, the form that confirms it."""

    action: str
    title: str
    targets: list[str]
    carry: dict[str, str]  # the fields the confirming form sends again
    back: str
    scanned: int = 0
    capped: bool = False
    notes: list[str] = field(default_factory=list)


def _own_job(settings: Settings, who: Principal, job_id: str) -> Any:
    record = store(settings).get(job_id)
    if not who.admin and record.tenant != who.tenant:
        raise JobNotFound(job_id)
    return record


def plan(settings: Settings, who: Principal, action: str, form: dict[str, str]) -> Plan:
    """What action would do for who, from its form.

    Raises:
        JobNotFound: the job or batch is unknown, or another tenant's.
        filters.BadFilter: a bulk action's filter cannot be read.
    """
    title = ACTIONS[action]
    if action in ("cancel", "retry", "resubmit", "replay"):
        job_id = form.get("job_id", "")
        record = _own_job(settings, who, job_id)
        back = f"/console/jobs/{job_id}"
        p = Plan(action, title, [job_id], {"job_id": job_id}, back)
        if action == "replay":
            letters = [e["id"] for e in dead_letters_of(settings, job_id)]
            p.targets = letters
            p.notes.append(f"{len(letters)} dead-lettered webhook(s) of job {job_id}")
        elif action == "cancel" and record.status not in ACTIVE:
            p.notes.append(f"it is {record.status.value}: cancelling changes nothing")
        return p
    if action == "cancel_batch":
        batch_id = form.get("batch_id", "")
        owner = store(settings).batch_tenant(batch_id)
        if owner is None or (not who.admin and owner != who.tenant):
            raise JobNotFound(batch_id)
        batch = store(settings).get_batch(batch_id, with_jobs=False)
        unfinished = batch.total - batch.ended
        return Plan(action, title, [batch_id], {"batch_id": batch_id},
                    f"/console/batches/{batch_id}",
                    notes=[f"{unfinished} of its {batch.total} jobs have not ended"])  # fmt: skip
    query = form.get("q", "")
    flt = filters.read(dict(parse_qsl(query)), who)
    wanted = {JobStatus.FAILED} if action == "bulk_retry" else set(ACTIVE)
    if flt.statuses:
        wanted &= set(flt.statuses)
    targets: list[str] = []
    scanned = 0
    if wanted:
        from dataclasses import replace

        flt = replace(flt, statuses=tuple(sorted(wanted)))
        found = JobScan(store(settings)).page(flt, limit=BULK_MAX + 1, window=BULK_WINDOW)
        targets, scanned = [r.id for r in found.jobs], found.scanned
    capped = len(targets) > BULK_MAX
    p = Plan(action, title, targets[:BULK_MAX], {"q": query}, f"/console/jobs?{query}",
             scanned=scanned, capped=capped)  # fmt: skip
    p.notes.append(f"{len(p.targets)} jobs match, among the {scanned} newest entries read")
    if capped:
        p.notes.append(f"at most {BULK_MAX} per action: run it again for the rest")
    return p


def dead_letters_of(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    """The job's dead-lettered webhooks (`videoqueue webhooks dead`'s entries of it)."""
    from ops.admin import dead_webhooks

    return [e for e in dead_webhooks(settings) if e.get("owner_id") == job_id]


def run(settings: Settings, p: Plan) -> list[str]:
    """Do a confirmed plan; one line per target saying what came of it.

    Raises:
        OperationRefused: a single job's action that cannot be done (not failed, ...).
    """
    if p.action == "cancel":
        record = cancel(p.targets[0], settings=settings)
        return [f"{record.id}: {record.status.value}"]
    if p.action in ("retry", "resubmit"):
        from ops.admin import retry_job

        record = retry_job(settings, p.targets[0], resubmit=p.action == "resubmit")
        return [f"{record.id}: {record.status.value} again"]
    if p.action == "replay":
        if not p.targets:
            raise OperationRefused("this job has no dead-lettered webhook to replay")
        from ops.admin import replay_webhooks

        return [
            f"{r['id']}: "
            + ("delivered" if r["ok"] else f"failed again ({r['error'] or r['status_code']})")
            for r in replay_webhooks(settings, p.targets)
        ]
    if p.action == "cancel_batch":
        batch = cancel_batch(p.targets[0], settings=settings)
        return [f"batch {batch.id}: cancelled ({batch.total - batch.ended} jobs had not ended)"]
    lines = []
    for job_id in p.targets:
        try:
            if p.action == "bulk_cancel":
                lines.append(f"{job_id}: {cancel(job_id, settings=settings).status.value}")
            else:
                from ops.admin import retry_job

                lines.append(f"{job_id}: {retry_job(settings, job_id).status.value} again")
        except VideoqueueError as e:  # one job's refusal does not stop the others
            lines.append(f"{job_id}: not done ({e})")
    return lines
