"""Batches: thousands of jobs enqueued in one call, tracked together.

A batch is validated whole before anything is written (all or nothing), then written in
chunks, each one Lua script that stores the records (a few round trips for 10,000 jobs instead
of 20,000), staged: nothing of it runs until a last atomic step releases every job at once.
So a producer that dies half-way leaves no job running that its caller cannot name, and a
retry with the same batch id resumes after the last whole chunk (job ids follow from the
batch id and the request's index, so a chunk written twice is still one set of jobs). Its jobs
default to priority -1, behind their tenant's single jobs, and provider slots are shared by
tenant (producer/core/lua/claim_submit.lua), so one campaign cannot starve everyone else.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from producer.core.errors import InvalidRequest, JobNotFound
from producer.core.ledger import Estimate, estimate
from producer.core.metadata import metadata_problems
from producer.core.records import (
    BatchRecord,
    BatchState,
    JobRecord,
    mark_cancelled,
    schedule_fields,
    utcnow_iso,
)
from producer.core.requests import VideoRequest, http_url, parse_request, unencodable_fields
from producer.core.settings import Settings, get_settings
from producer.core.store import BATCH_ID_TAKEN, NO_SUCH_CHARACTER, NewJob, store
from producer.core.tenants import check_tenant
from producer.core.urls import UrlPolicy, check_outbound

# Jobs per Lua call: large enough that round trips vanish, small enough that one call
# blocks Redis for milliseconds, not seconds.
CHUNK_JOBS = 2500
# Batches up to this size keep their validated models between checking and writing; larger
# ones validate each request twice rather than hold every model in memory at once.
KEEP_MODELS_UP_TO = 20_000
# Requests one batch may hold: 100,000 validate and write in seconds; a bigger campaign is
# several batches.
MAX_BATCH_JOBS = 100_000
# A caller's batch id: it names Redis keys (no ":", which would let "b:jobs" name batch b's
# job list) and travels in webhooks.
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# How many problems an InvalidRequest for a batch spells out.
MAX_PROBLEMS_LISTED = 20


def enqueue_batch(
    requests: Iterable[VideoRequest | dict[str, Any]],
    *,
    batch_id: str | None = None,
    webhook_url: str | None = None,
    batch_webhook_url: str | None = None,
    metadata: dict[str, str] | None = None,
    tenant: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Validate a list of generation requests and queue them as one batch.

    Args:
        requests: request dicts or VideoRequest models.
        batch_id: the caller's id for the batch (letters, digits, `_.-`, up to 128), which
            makes the call safe to retry: a batch already released is returned as it is, one
            whose writing was cut short is resumed, and each request runs once. A retry must
            pass the same requests in the same order. Without one, a random id.
        webhook_url: each job's webhook, unless the request names its own.
        batch_webhook_url: receives one `batch.completed` event when every job has ended.
        metadata: merged into every job's metadata (a request's own keys win).
        tenant: who the batch and its jobs belong to (1-64 of letters, digits, `._-`;
            "default" without one). Its idempotency keys are the tenant's own, and a batch id
            another tenant's batch has is refused.
        settings: defaults to the environment's.

    Returns:
        The batch id. Items whose idempotency_key an earlier job holds get no new job; the
        batch record lists them under `deduplicated`.

    Raises:
        InvalidRequest: naming every bad item by index and field; nothing was written.
        BudgetExceeded: the batch's estimated cost, as a whole, would take the tenant past
            its budget; nothing was written (or, should the budget change while the batch is
            written, nothing is left).
    """
    s = settings or get_settings()
    owner = check_tenant(tenant)
    items = list(requests)
    if not items:
        raise InvalidRequest("a batch needs at least one request")
    if len(items) > MAX_BATCH_JOBS:
        raise InvalidRequest(
            f"a batch holds at most {MAX_BATCH_JOBS} requests (got {len(items)})",
            [{"field": "requests", "message": f"at most {MAX_BATCH_JOBS} requests"}],
        )
    _check_batch_fields(
        {"webhook_url": webhook_url, "batch_webhook_url": batch_webhook_url, "metadata": metadata,
         "batch_id": batch_id},
        s.url_policy,
    )  # fmt: skip
    keep = len(items) <= KEEP_MODELS_UP_TO
    costs: list[Estimate] = []
    validated = _validate_all(
        items, keep=keep, settings=s, metadata=metadata, tenant=owner, costs=costs
    )

    batch_id = batch_id or f"batch_{uuid.uuid4().hex}"
    st = store(s)
    if st.batch_tenant(batch_id) not in (None, owner):
        # (stage_batch.lua refuses it too, for two tenants racing to one new id.)
        raise InvalidRequest.of_field("batch_id", BATCH_ID_TAKEN)
    state, staged = st.batch_progress(batch_id)
    if state is BatchState.RELEASED:
        return batch_id
    if staged == 0:
        # The batch as a whole, before any of it is written; release_batch's reservation is
        # the atomic check (a retry resuming a staged batch is checked there alone).
        unpriced = next((c for c in costs if not c.priced), None)
        total = Estimate(
            round(sum(c.usd for c in costs), 6), unpriced.unpriced_at if unpriced else None
        )
        st.ledger.check(owner, total, "a model of the batch")
    template = _record_template(batch_id, owner)
    now = utcnow_iso()  # one instant for the whole batch
    api_format = s.api_format.value
    fields = {"metadata": json.dumps(metadata or {}), "created_at": now}
    if batch_webhook_url:
        fields["webhook_url"] = batch_webhook_url
    for start in range(staged, len(items), CHUNK_JOBS):
        chunk = items[start : start + CHUNK_JOBS]
        models = (
            validated[start : start + CHUNK_JOBS] if keep else [parse_request(x) for x in chunk]
        )
        jobs = [
            _new_job(req, _job_id(batch_id, start + i), now, template, api_format, webhook_url,
                     metadata, costs[start + i])
            for i, req in enumerate(models)
        ]  # fmt: skip
        st.stage_batch_chunk(
            batch_id,
            jobs,
            first_index=start,
            fields=fields if start == 0 else None,
            tenant=owner,
        )
    st.release_batch(batch_id, owner)
    return batch_id


def _job_id(batch_id: str, index: int) -> str:
    """The id of the batch's job for request index: the same on every retry."""
    return "job_" + hashlib.sha256(f"{batch_id}\x00{index}".encode()).hexdigest()[:32]


def _check_batch_fields(fields: dict[str, Any], policy: UrlPolicy) -> None:
    """Refuse a bad batch-wide field, naming it (they are the caller's strings too)."""
    problems = [{"field": f, "message": "not valid unicode text (a lone surrogate)"}
                for f in unencodable_fields(fields)]  # fmt: skip
    metadata = fields["metadata"]
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        problems.append({"field": "metadata", "message": "metadata must map strings to strings"})
    elif metadata is not None and not problems:  # (bounds are measured on valid text)
        problems += metadata_problems(metadata)
    batch_id = fields["batch_id"]
    if batch_id is not None and not (isinstance(batch_id, str) and _BATCH_ID.fullmatch(batch_id)):
        problems.append(
            {
                "field": "batch_id",
                "message": "letters, digits and _.- (up to 128), starting alphanumeric",
            }
        )
    for name in ("webhook_url", "batch_webhook_url"):
        try:
            http_url(fields[name], name)
        except ValueError as e:
            problems.append({"field": name, "message": str(e)})
    if problems:
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidRequest(f"invalid batch: {text}", problems)
    for name in ("webhook_url", "batch_webhook_url"):
        check_outbound(fields[name], name, policy)


def _validate_all(
    items: list[Any],
    *,
    keep: bool,
    settings: Settings,
    metadata: dict[str, str] | None,
    tenant: str,
    costs: list[Estimate],
) -> list[VideoRequest]:
    """The batch's requests validated (kept only if keep), each one's estimate appended to
    costs.

    Raises:
        InvalidRequest: naming every bad item by index and field.
    """
    models: list[VideoRequest] = []
    problems: list[dict[str, Any]] = []
    uses: list[tuple[int, int, str]] = []  # (item, position, character id)
    for index, item in enumerate(items):
        try:
            model = parse_request(item)
            check_outbound(model.webhook_url, "webhook_url", settings.url_policy)
            costs.append(estimate(model, settings))  # a provider that can take it, and at what
            if metadata and (bad := metadata_problems({**metadata, **model.metadata})):
                # the batch's metadata merged into the item's must fit S3 as well
                raise InvalidRequest("metadata", bad)
        except InvalidRequest as e:
            for p in e.errors or [{"field": "(request)", "message": str(e)}]:
                problems.append({"index": index, **p})
            continue
        uses += [(index, k, c) for k, c in enumerate(model.characters)]
        if keep:
            models.append(model)
    if uses and (foreign := store(settings).foreign_characters((c for *_, c in uses), tenant)):
        problems += [{"index": i, "field": f"characters.{k}", "message": NO_SUCH_CHARACTER}
                     for i, k, c in uses if c in foreign]  # fmt: skip
        problems.sort(key=lambda p: p["index"])
    if problems:
        listed = "; ".join(
            f"item {p['index']}: {p['field']}: {p['message']}"
            for p in problems[:MAX_PROBLEMS_LISTED]
        )
        more = len(problems) - MAX_PROBLEMS_LISTED
        bad_items = len({p["index"] for p in problems})
        raise InvalidRequest(
            f"{bad_items} of {len(items)} requests are invalid, nothing was enqueued: {listed}"
            + (f"; and {more} more problems" if more > 0 else ""),
            problems,
        )
    return models


def _new_job(
    req: VideoRequest,
    job_id: str,
    now: str,
    template: str,
    api_format: str,
    webhook_url: str | None,
    metadata: dict[str, str] | None,
    cost: Estimate,
) -> NewJob:
    # A record is the JobRecord-shaped template with this job's values filled in, its
    # request serialised by pydantic's own (compiled) JSON encoder: at 10,000 jobs a model
    # and json.dumps per record would cost a third of a second.
    if (webhook_url and req.webhook_url is None) or metadata:
        req = req.model_copy(
            update={
                "webhook_url": req.webhook_url or webhook_url,
                "metadata": {**(metadata or {}), **req.metadata},
            }
        )
    schedule = _DEFAULT_SCHEDULE  # the common item: no priority, no deadline of its own
    if req.priority is not None or req.deadline_s is not None:
        fields = schedule_fields(req.priority, req.deadline_s, in_batch=True, now=_parse_iso(now))
        schedule = json.dumps(fields)[1:-1]  # its fields, spliced in after the template's
    record_json = template % {
        "id": job_id,
        "schedule": schedule,
        "request": req.model_dump_json(exclude_none=True),
        "metadata": json.dumps(req.metadata) if req.metadata else "{}",
        "api_format": req.api_format.value if req.api_format else api_format,
        "now": now,
        "reserved": cost.usd,
    }
    return NewJob(job_id, record_json, req.idempotency_key, cost)


def _record_template(batch_id: str, tenant: str) -> str:
    """A JobRecord's JSON with %(name)s holes for the values that differ per job."""
    marks = {"id": "\x00id", "api_format": "\x00api_format", "created_at": "\x00now",
             "updated_at": "\x00now"}  # fmt: skip
    record = JobRecord(id="", request={}, batch_id=batch_id, tenant=tenant).model_dump(mode="json")
    record.update(marks, request="\x00request", metadata="\x00metadata")
    # Its estimate, reserved when the batch is released (lua/release_batch.lua).
    record["cost"]["reserved_usd"] = record["billing"]["estimate_usd"] = "\x00reserved"
    for name in ("priority", "deadline_s", "deadline_at", "deadline_unix_s"):
        del record[name]  # each job's own, spliced in at its end (%(schedule)s)
    text = json.dumps(record, separators=(",", ":")).replace("%", "%%")
    for name in ("id", "api_format", "now"):
        text = text.replace(f'"\\u0000{name}"', f'"%({name})s"')
    for name in ("request", "metadata", "reserved"):
        text = text.replace(f'"\\u0000{name}"', f"%({name})s")
    return text[:-1] + ",%(schedule)s}"


_DEFAULT_SCHEDULE = json.dumps(schedule_fields(None, None, in_batch=True, now=datetime.now()))[1:-1]


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def get_batch(batch_id: str, *, settings: Settings | None = None) -> BatchRecord:
    """The batch's record: counts by status, times, job ids.

    Raises:
        JobNotFound: when no batch has that id.
    """
    return store(settings).get_batch(batch_id)


def cancel_batch(batch_id: str, *, settings: Settings | None = None) -> BatchRecord:
    """Cancel every job of the batch that has not ended.

    Jobs not yet submitted never will be (their submit sees the batch's cancelled flag);
    jobs already at the provider are cancelled there where the provider allows it
    (DELETE /v1/videos/{id}), else left to finish unobserved.

    Raises:
        JobNotFound: when no batch has that id.
    """
    st = store(settings)
    batch = st.get_batch(batch_id, with_jobs=False)
    if not st.set_batch_fields(batch_id, {"cancelled": "1"}):
        raise JobNotFound(batch_id)  # it expired since it was read
    if batch.state is BatchState.STAGING:
        # Nothing of it runs yet; once released, each job's submit sees the flag.
        return st.get_batch(batch_id)

    for job_id in st.batch_job_ids(batch_id):
        st.update(job_id, mark_cancelled, after=lambda r, pipe: st.schedule.nudge(r.id, pipe))
    return st.get_batch(batch_id)
