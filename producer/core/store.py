"""Job and batch records in Redis: the one place that knows keys and transitions (its Lua
scripts are in producer/core/lua/)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from producer.core.errors import InvalidRequest, JobNotFound
from producer.core.ledger import Estimate, Ledger, micros, refused, settle, usd
from producer.core.names import Keys, Lane, batch_member
from producer.core.records import (
    TERMINAL,
    BatchRecord,
    BatchState,
    JobRecord,
    JobStatus,
    WebhookDelivery,
    utcnow_iso,
)
from producer.core.redis_client import client as redis_client
from producer.core.redis_client import connect
from producer.core.schedule import Schedule
from producer.core.scripts import Script
from producer.core.settings import Settings, get_settings
from producer.core.tenants import DEFAULT_TENANT

# A change to one record: mutate it in place; return False to leave Redis untouched.
Change = Callable[[JobRecord], bool | None]
# More commands for the same transaction as a change, queued on its pipeline.
After = Callable[[JobRecord, Any], None]

MAX_DEAD_LETTERS = 10_000
MAX_STATUS_WORDS = 100
OTHER_STATUS_WORDS = "(other)"
# Another tenant's character reads as one that does not exist: ids say nothing across tenants.
NO_SUCH_CHARACTER = "no such character (create it with this tenant's key)"
# Why a batch id is refused when another tenant's batch has it (saying no more than that).
BATCH_ID_TAKEN = "already taken, choose another"
# How long a finished job's records are kept unless told otherwise (VIDEOQUEUE_RECORD_TTL_S).
DEFAULT_RECORD_TTL_S = 7 * 24 * 3600.0
# A provider's file URL is kept this long at most: the copy step runs right after the poll
# that saw it (and it is never kept past the record's own expiry).
FILE_URL_TTL_S = 3600.0


@dataclass
class NewJob:
    """A validated job ready to be written: its record JSON, idempotency key and estimate."""

    id: str
    record_json: str
    idempotency_key: str | None
    estimate: Estimate = Estimate(0.0)


class JobStore:
    """Reads and writes job and batch records, and their schedule entries.

    A finished job's record and every key of it (its idempotency claim, its event body, its
    file URL) expire record_ttl_s after it ended; a batch's keys with its last job's. While a
    job runs none of its keys expires.

    Args:
        client: a Redis client.
        prefix: the key prefix every key of this deployment starts with.
        record_ttl_s: how long a finished job's keys are kept.
    """

    def __init__(
        self, client: redis.Redis, prefix: str, record_ttl_s: float = DEFAULT_RECORD_TTL_S
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.record_ttl_s = record_ttl_s
        self._ttl_ms = max(1, int(record_ttl_s * 1000))
        self.schedule = Schedule(client, self.keys)
        self.ledger = Ledger(client, self.keys)
        self._create = Script(client, "create")
        self._expire_claim = Script(client, "expire_claim")
        self._stage_batch = Script(client, "stage_batch")
        self._release_batch = Script(client, "release_batch")
        self._job_ended = Script(client, "job_ended")
        self._dead_letter = Script(client, "dead_letter")
        self._count_word = Script(client, "count_word")
        self._count_status = Script(client, "count_status")
        self._page_jobs = Script(client, "page_jobs")

    @classmethod
    def from_url(
        cls, url: str, prefix: str, record_ttl_s: float = DEFAULT_RECORD_TTL_S
    ) -> JobStore:
        """A store on url: a redis:// URL, or a sentinel:// one for the master `mymaster`."""
        return cls(connect(url), prefix, record_ttl_s)

    def expire_at_ms(self, finished_at: str | None) -> int:
        """When the keys of something that finished at finished_at (ISO; None: now) expire,
        in Unix ms: fixed by the end, so later writes (webhook attempts) keep the same one."""
        end = datetime.fromisoformat(finished_at.replace("Z", "+00:00")) if finished_at else None
        return int((end or datetime.now(UTC)).timestamp() * 1000) + self._ttl_ms

    # --- jobs ---

    def create(
        self, record: JobRecord, idempotency_key: str | None, estimate: Estimate | None = None
    ) -> str:
        """Store a new job with its schedule entry, due now, and reserve its estimate against
        its tenant's budget in the same step; returns the job id that holds the idempotency
        key (the new one, or an earlier job's: never a staged one, which may never run, see
        lua/staged_holder.lua). The record's cost says the estimate reserved.

        Raises:
            BudgetExceeded: the estimate would take the tenant past its budget.
            InvalidRequest: naming `model`, when the tenant has a budget and a provider the job
                may go to has no price for it.
            (Nothing is written then.)
        """
        idem = self.keys.idempotency(idempotency_key, record.tenant) if idempotency_key else ""
        estimate = estimate or Estimate(0.0)
        held = self._create(
            **self.ledger.reservation_keys(record.tenant),
            tenant=record.tenant,
            reserve=micros(estimate.usd),
            priced="1" if estimate.priced else "",
            claim=idem,
            job=self.keys.job(record.id),
            lane=self.keys.schedule(Lane.SUBMIT),
            status_counts=self.keys.status_counts(),
            job_index=self.keys.job_index(),
            tenant_index=self.keys.tenant_job_index(record.tenant),
            job_id=record.id,
            record=record.model_dump_json(),
            retention_s=self.record_ttl_s,
            job_prefix=self.keys.job(""),
            batch_prefix=self.keys.batch(""),
        )
        if isinstance(held, list):
            model = f"model {record.request.get('model')!r}"
            raise refused(held, record.tenant, estimate, model)
        return _text(held)

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord | None]:
        """Records of many jobs in one round trip (None where there is none)."""
        raws = self.redis.mget([self.keys.job(j) for j in job_ids]) if job_ids else []
        return {
            j: JobRecord.model_validate_json(raw) if raw is not None else None
            for j, raw in zip(job_ids, raws, strict=True)
        }

    def get(self, job_id: str) -> JobRecord:
        """The job's record.

        Raises:
            JobNotFound: when there is none.
        """
        raw = self.redis.get(self.keys.job(job_id))
        if raw is None:
            raise JobNotFound(job_id)
        return JobRecord.model_validate_json(raw)

    def page(
        self, tenant: str | None, after: str | None, limit: int, order: str = "desc"
    ) -> tuple[list[JobRecord], bool] | None:
        """Up to limit jobs of the tenant (None: of every tenant), newest first (order "desc")
        or oldest first ("asc"), after the job `after` (None: from the first), and whether
        more follow; None when `after` is not in that listing (no such job, another tenant's,
        or gone). Jobs whose records expired are skipped, and their index entries removed
        (lua/page_jobs.lua); jobs created longer ago than the records' retention are no
        longer listed."""
        index = self.keys.job_index() if tenant is None else self.keys.tenant_job_index(tenant)
        found = self._page_jobs(
            index=index, job_prefix=self.keys.job(""), after=after or "", limit=limit,
            order=order,
        )  # fmt: skip
        if found is None:
            return None
        more, raws = found
        return [JobRecord.model_validate_json(raw) for raw in raws], bool(more)

    def update(self, job_id: str, change: Change, *, after: After | None = None) -> JobRecord:
        """Apply change to the record atomically (optimistic locking; retried on conflict).

        `change` mutates the record in place; returning False leaves Redis untouched.
        `after(record, pipe)` queues more commands in the same transaction (a schedule move,
        a slot given back), so that a follow-up cannot be lost to a crash right after the
        change. Workers on several hosts may update one job at once: the WATCH makes the last
        writer re-read instead of overwriting the other's change. A batch's counts move with
        its jobs' statuses in the same transaction.

        Raises:
            JobNotFound: when there is no such job.
        """
        return self.update_many({job_id: change}, after=after)[job_id]

    def update_many(
        self, changes: dict[str, Change], *, after: After | None = None
    ) -> dict[str, JobRecord]:
        """update() for many jobs in one transaction: one read, one write (poll batches).

        A job without a record is left out of the result, unless it is the only one
        (then JobNotFound is raised, as update() promises).
        """
        keys = {job_id: self.keys.job(job_id) for job_id in changes}
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(*keys.values())
                    raws = pipe.mget(list(keys.values()))
                    records: dict[str, JobRecord] = {}
                    written: list[tuple[JobRecord, Any, tuple[float, float], dict[str, float]]] = []
                    for (job_id, change), raw in zip(changes.items(), raws, strict=True):
                        if raw is None:
                            if len(changes) == 1:
                                raise JobNotFound(job_id)
                            continue
                        record = JobRecord.model_validate_json(raw)
                        before = record.status
                        cost = (record.cost.reserved_usd, record.cost.charged_usd)
                        records[job_id] = record
                        if change(record) is not False:
                            if record.status in TERMINAL:
                                settle(record)  # its money, in this same transaction
                            written.append((record, before, cost, self._batch_usage(record)))
                    if not written:
                        pipe.unwatch()
                        return records
                    pipe.multi()
                    for record, before, cost, usage in written:
                        record.updated_at = utcnow_iso()
                        self._write(pipe, keys[record.id], record, before)
                        self.ledger.move(pipe, cost, record)
                        for name, amount in usage.items():
                            pipe.hincrbyfloat(self.keys.batch_usage(record.batch_id or ""),
                                              name, amount)  # fmt: skip
                        if record.status is not before:
                            # Counted in the transaction of the move itself: a step that
                            # runs twice finds the job moved already and counts nothing.
                            self._move_status_count(pipe, record, before)
                            if record.status in TERMINAL and before not in TERMINAL:
                                pipe.hincrby(self.keys.finished_counts(), record.status.value, 1)
                        if record.batch_id and record.status is not before:
                            self._count_move(pipe, record, before)
                        if after is not None:
                            after(record, pipe)
                        pipe.publish(self.keys.events(record.id), record.status.value)
                    pipe.execute()
                    return records
                except redis.WatchError:
                    continue

    @staticmethod
    def _batch_usage(record: JobRecord) -> dict[str, float]:
        """What of an ended batch job's usage its batch has not summed yet (marked summed in
        the record): so whoever ends the job (a worker, a producer's cancel), the batch counts
        its usage, and a job an operator ran again adds only what changed since."""
        if not record.batch_id or record.status not in TERMINAL or not record.usage:
            return {}
        counted = record.billing.usage_counted
        more = {k: v - counted.get(k, 0.0) for k, v in record.usage.items()
                if v != counted.get(k, 0.0)}  # fmt: skip
        record.billing.usage_counted = dict(record.usage)
        return more

    def _write(self, pipe: Any, key: str, record: JobRecord, before: Any) -> None:
        """Queue the record's write; an ended job's keys get their expiry (a running one's
        none: SET without one clears any)."""
        if record.status not in TERMINAL:
            pipe.set(key, record.model_dump_json())
            return
        at_ms = self.expire_at_ms(record.finished_at)
        pipe.set(key, record.model_dump_json(), pxat=at_ms)
        # (Its event body is written after this, with the same expiry: pin_event_body.)
        if before not in TERMINAL and (idem := record.request.get("idempotency_key")):
            self._expire_claim(
                claim=self.keys.idempotency(idem, record.tenant),
                job_id=record.id,
                expire_at_ms=at_ms,
                client=pipe,
            )

    def _move_status_count(self, pipe: Any, record: JobRecord, before: Any) -> None:
        """Move the job's count from before to its status (an ended job's counts while its
        record exists: lua/count_status.lua)."""
        ended = record.status in TERMINAL
        self._count_status(
            status_counts=self.keys.status_counts(),
            expiring_before=self.keys.expiring_status(before.value),
            expiring_after=self.keys.expiring_status(record.status.value),
            job_id=record.id,
            before=before.value,
            before_ended="1" if before in TERMINAL else "",
            expire_at_ms=self.expire_at_ms(record.finished_at) if ended else "",
            after=record.status.value,
            client=pipe,
        )

    def _count_move(self, pipe: Any, record: JobRecord, before: Any) -> None:
        batch_id = record.batch_id or ""
        counts = self.keys.batch_counts(batch_id)
        pipe.hincrby(counts, before.value, -1)
        pipe.hincrby(counts, record.status.value, 1)
        if record.status in TERMINAL and before not in TERMINAL:
            self._job_ended(
                batch=self.keys.batch(batch_id),
                batch_lane=self.keys.schedule(Lane.NOTIFY_BATCH),
                batch_jobs=self.keys.batch_jobs(batch_id),
                batch_counts=self.keys.batch_counts(batch_id),
                batch_usage=self.keys.batch_usage(batch_id),
                batch_member=batch_member(batch_id),
                now_iso=utcnow_iso(),
                expire_at_ms=self.expire_at_ms(record.finished_at),
                client=pipe,
            )

    # --- batches ---

    def stage_batch_chunk(
        self,
        batch_id: str,
        jobs: Sequence[NewJob],
        *,
        first_index: int,
        fields: dict[str, str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """Write one chunk of a batch atomically, staged (nothing runs until release_batch);
        a chunk written already is left alone.

        Raises:
            InvalidRequest: naming `batch_id`, when another tenant's batch has that id
                (none of the chunk's jobs was written).
        """
        with self.redis.pipeline() as pipe:
            self._stage_batch(
                batch_fields=json.dumps(fields) if fields else "",
                **self._batch_keys(batch_id),
                expiring_queued=self.keys.expiring_status(JobStatus.QUEUED.value),
                job_index=self.keys.job_index(),
                tenant_index=self.keys.tenant_job_index(tenant),
                idem_prefix=self.keys.idempotency("", tenant),
                job_prefix=self.keys.job(""),
                first_index=first_index,
                tenant=tenant,
                now_iso=utcnow_iso(),
                ttl_ms=self._ttl_ms,
                batch_prefix=self.keys.batch(""),
                jobs=[
                    {
                        "id": j.id,
                        "idempotency_key": j.idempotency_key or "",
                        "record": j.record_json,
                        "reserve": micros(j.estimate.usd),
                        "priced": "1" if j.estimate.priced else "",
                    }
                    for j in jobs
                ],
                client=pipe,
            )
            staged = pipe.execute()[-1]
        if int(staged) < 0:
            raise InvalidRequest.of_field("batch_id", BATCH_ID_TAKEN)

    def release_batch(self, batch_id: str, tenant: str = DEFAULT_TENANT) -> None:
        """Schedule every staged job of the batch at once and seal it (once), reserving their
        estimates against the tenant's budget in the same step; tenant is the batch's (its
        jobs' idempotency claims are the tenant's).

        Raises:
            BudgetExceeded: the batch's estimates together would take the tenant past its
                budget; the staged batch is undone (nothing of it is left).
            InvalidRequest: naming `model`, when the tenant has a budget and some job of the
                batch has no price (the batch is undone).
        """
        released = self._release_batch(
            **self._batch_keys(batch_id),
            **self.ledger.reservation_keys(tenant),
            batch_usage=self.keys.batch_usage(batch_id),
            tenant=tenant,
            legacy_claims=self.keys.batch_staged_claims(batch_id),
            lane=self.keys.schedule(Lane.SUBMIT),
            batch_lane=self.keys.schedule(Lane.NOTIFY_BATCH),
            status_counts=self.keys.status_counts(),
            expiring_queued=self.keys.expiring_status(JobStatus.QUEUED.value),
            job_index=self.keys.job_index(),
            tenant_index=self.keys.tenant_job_index(tenant),
            job_prefix=self.keys.job(""),
            now_iso=utcnow_iso(),
            batch_member=batch_member(batch_id),
            ttl_ms=self._ttl_ms,
            idem_prefix=self.keys.idempotency("", tenant),
            expiring_prefix=self.keys.expiring_status(""),
        )
        if isinstance(released, list):
            facts, requested = released[:-1], usd(int(released[-1]))
            unpriced = "one of them" if _text(facts[0]) == "unpriced" else None
            raise refused(facts, tenant, Estimate(requested, unpriced), "a model of the batch")

    def batch_progress(self, batch_id: str) -> tuple[BatchState | None, int]:
        """(state, requests staged) of a batch: (None, 0) when there is none yet."""
        state, staged = self.redis.hmget(self.keys.batch(batch_id), ["state", "staged"])
        if state is None:
            # A batch written before batches were staged has no state, and was released.
            return (
                BatchState.RELEASED if self.redis.exists(self.keys.batch(batch_id)) else None
            ), 0
        return BatchState(_text(state)), int(staged or 0)

    def batch_tenant(self, batch_id: str) -> str | None:
        """The tenant the batch belongs to; None when there is no such batch."""
        key = self.keys.batch(batch_id)
        tenant = self.redis.hget(key, "tenant")
        if tenant is not None:
            return _text(tenant)
        # A batch written before tenants was the default tenant's.
        return DEFAULT_TENANT if self.redis.exists(key) else None

    def _batch_keys(self, batch_id: str) -> dict[str, str]:
        return {
            "batch": self.keys.batch(batch_id),
            "batch_jobs": self.keys.batch_jobs(batch_id),
            "batch_counts": self.keys.batch_counts(batch_id),
            "batch_claims": self.keys.batch_claims(batch_id),
        }

    def get_batch(self, batch_id: str, *, with_jobs: bool = True) -> BatchRecord:
        """The batch's record.

        Raises:
            JobNotFound: when no batch has that id.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.batch(batch_id))
            pipe.hgetall(self.keys.batch_counts(batch_id))
            if with_jobs:
                pipe.lrange(self.keys.batch_jobs(batch_id), 0, -1)
            pipe.hgetall(self.keys.batch_usage(batch_id))
            found = pipe.execute()
        fields = {_text(k): _text(v) for k, v in found[0].items()}
        if not fields:
            raise JobNotFound(batch_id)
        counts = {_text(k): int(v) for k, v in found[1].items() if int(v)}
        webhook = fields.get("webhook")
        return BatchRecord(
            id=batch_id,
            total=int(fields.get("total", 0)),
            ended=int(fields.get("ended", 0)),
            counts=counts,
            created_at=fields["created_at"],
            finished_at=fields.get("finished_at"),
            cancelled=fields.get("cancelled") == "1",
            job_ids=[_text(x) for x in found[2]] if with_jobs else [],
            deduplicated={
                k.removeprefix("dedup:"): v for k, v in fields.items() if k.startswith("dedup:")
            },
            state=BatchState(fields.get("state", BatchState.RELEASED)),
            metadata=json.loads(fields.get("metadata", "{}")),
            webhook=WebhookDelivery.model_validate_json(webhook) if webhook else None,
            usage={_text(k): float(v) for k, v in found[-1].items()},
            tenant=fields.get("tenant", DEFAULT_TENANT),
        )

    def set_batch_fields(self, batch_id: str, fields: dict[str, str]) -> bool:
        """Write fields of the batch's record; False (nothing written) once its keys have
        expired: a write then would bring back a hash with neither its other fields nor an
        expiry."""
        key = self.keys.batch(batch_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if not pipe.exists(key):
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping=cast(Any, fields))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def reopen_in_batch(self, batch_id: str, client: Any) -> None:
        """One of the batch's jobs runs again (an operator retried it): it has not ended."""
        client.hincrby(self.keys.batch(batch_id), "ended", -1)

    def batch_webhook_url(self, batch_id: str) -> str | None:
        return _text(self.redis.hget(self.keys.batch(batch_id), "webhook_url")) or None

    def batch_cancelled(self, batch_id: str) -> bool:
        return self.redis.hget(self.keys.batch(batch_id), "cancelled") == b"1"

    def batch_job_ids(self, batch_id: str) -> list[str]:
        return [_text(x) for x in self.redis.lrange(self.keys.batch_jobs(batch_id), 0, -1)]

    # --- odds and ends ---

    def stash_file_url(self, job_id: str, url: str, client: Any = None) -> None:
        # Stashed before the job ends, so this bound also keeps it within the record's expiry.
        ttl_ms = int(min(FILE_URL_TTL_S * 1000, self._ttl_ms))
        (client or self.redis).set(self.keys.file_url(job_id), url, px=ttl_ms)

    def file_url(self, job_id: str) -> str | None:
        return _text(self.redis.get(self.keys.file_url(job_id))) or None

    def forget_file_url(self, job_id: str) -> None:
        self.redis.delete(self.keys.file_url(job_id))

    def pin_event_body(self, key: str, body: str, expire_at_ms: int) -> str:
        """Keep body under key unless one is kept already; return the kept one. It expires
        with its owner's records (expire_at_ms, Unix ms)."""
        self.redis.set(key, body, nx=True, pxat=expire_at_ms)
        return _text(self.redis.get(key)) or body

    def count_unknown_status(self, word: str) -> None:
        self._count_word(
            words=self.keys.unknown_statuses(),
            word=word,
            other=OTHER_STATUS_WORDS,
            cap=MAX_STATUS_WORDS,
        )

    def record_dead_letter(self, event_id: str, detail: dict[str, Any], owner_id: str) -> None:
        """Keep a given-up delivery under its webhook-id, with the job (or batch) it belongs
        to, for replay (the newest MAX_DEAD_LETTERS, for VIDEOQUEUE_RECORD_TTL_S)."""
        self._dead_letter(
            letters=self.keys.dead_letters(),
            letters_by_time=self.keys.dead_letters_by_time(),
            webhook_id=event_id,
            detail=json.dumps({**detail, "owner_id": owner_id}),
            retention_ms=self._ttl_ms,
            cap=MAX_DEAD_LETTERS,
        )

    def wait_for_replicas(self, replicas: int, timeout_ms: int) -> int:
        """Block until `replicas` replicas have every write this process made so far (at most
        timeout_ms); returns how many have. Redis WAIT counts the writes of its own
        connection only, and the pool may hand this call another one than the write's: so
        a short-lived fence key is written first on the WAIT's connection. Replication is
        one ordered stream, so a replica that has the fence has every write before it."""
        with self.redis.pipeline(transaction=False) as pipe:  # one connection, in order
            pipe.set(self.keys.replication_fence(), "1", px=60_000)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            _, acknowledged = pipe.execute()
        return int(acknowledged)

    def set_character_tenant(self, character_id: str, tenant: str) -> None:
        """Remember whose character it is (kept as long as the provider keeps it: forever)."""
        self.redis.set(self.keys.character(character_id), tenant)

    def foreign_characters(self, character_ids: Iterable[str], tenant: str) -> set[str]:
        """Those of the characters that another tenant made through videoqueue (one read)."""
        ids = list(dict.fromkeys(character_ids))
        if not ids:
            return set()
        owners = self.redis.mget([self.keys.character(c) for c in ids])
        return {c for c, owner in zip(ids, owners, strict=True) if owner and _text(owner) != tenant}

    def character_tenant(self, character_id: str) -> str | None:
        """Whose character it is; None for one not made through videoqueue's verbs."""
        return _text(self.redis.get(self.keys.character(character_id))) or None

    def forget_dead_letter(self, event_id: str) -> None:
        """A dead letter was delivered after all (a replay)."""
        with self.redis.pipeline() as pipe:
            pipe.hdel(self.keys.dead_letters(), event_id)
            pipe.zrem(self.keys.dead_letters_by_time(), event_id)
            pipe.execute()


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# One store (one connection pool) per Redis address and prefix: built once, shared by every
# caller in the process. Keyed by what the client is made from, Settings being unhashable.
_stores: dict[tuple[Any, ...], JobStore] = {}


def store(settings: Settings | None = None) -> JobStore:
    """The job store for these settings (one connection pool per Redis address and prefix)."""
    s = settings or get_settings()
    password = s.sentinel_password.get_secret_value() if s.sentinel_password else None
    address = (
        s.records_url, s.sentinel_master, password, s.key_prefix, s.record_ttl_s,
        s.redis_timeout_s,
    )  # fmt: skip
    found = _stores.get(address)
    if found is None:
        if len(_stores) >= 8:  # as the lru_cache before it: tests make many deployments
            _stores.pop(next(iter(_stores)))
        found = _stores[address] = JobStore(redis_client(s), s.key_prefix, s.record_ttl_s)
    return found
