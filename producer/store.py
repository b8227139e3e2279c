"""Job and batch records in Redis: the one place that knows keys, scripts and transitions."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from producer import names
from producer.errors import JobNotFound
from producer.messages import task_message
from producer.names import Keys
from producer.records import TERMINAL, BatchRecord, JobRecord, WebhookDelivery, utcnow_iso

# Record, idempotency claim and first task message land together or not at all, so a crash
# can neither lose an accepted job nor leave a message without its record. An existing claim
# on the idempotency key wins: the caller gets the job that holds it.
_CREATE = """
if KEYS[1] ~= '' then
  local held = redis.call('GET', KEYS[1])
  if held then return held end
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
return ARGV[1]
"""

# A chunk of a batch in one atomic step: records, idempotency claims, submit messages and
# the batch's bookkeeping. Job and idempotency keys are built from prefixes inside the script
# (one key per job would not fit in KEYS for 10,000 jobs); videoqueue needs one Redis, not a
# cluster. ARGV: idempotency-key prefix, job-key prefix, index of the chunk's first request,
# seal ("1" on the last chunk), now, the queue and message of the batch.completed webhook,
# then one value per job: id, idempotency key or "", record JSON and submit message, joined
# by the unit separator (\x1f), which JSON text escapes and ids never hold: one argument per
# job instead of four is a third less work for the client.
# Returns the request indexes whose idempotency key an earlier job held, each
# followed by that job's id.
_CREATE_BATCH = """
local batch, jobs, queue, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local idem_prefix, job_prefix, first_index, seal = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local held, ids, msgs = {}, {}, {}
for i = 8, #ARGV do
  local f1 = string.find(ARGV[i], '\\31', 1, true)
  local f2 = string.find(ARGV[i], '\\31', f1 + 1, true)
  local f3 = string.find(ARGV[i], '\\31', f2 + 1, true)
  local id, idem = string.sub(ARGV[i], 1, f1 - 1), string.sub(ARGV[i], f1 + 1, f2 - 1)
  local record, message = string.sub(ARGV[i], f2 + 1, f3 - 1), string.sub(ARGV[i], f3 + 1)
  local earlier = false
  if idem ~= '' then
    earlier = redis.call('GET', idem_prefix .. idem)
    if not earlier then redis.call('SET', idem_prefix .. idem, id) end
  end
  if earlier then
    held[#held + 1] = tostring(first_index + i - 8)
    held[#held + 1] = earlier
  else
    redis.call('SET', job_prefix .. id, record)
    ids[#ids + 1] = id
    msgs[#msgs + 1] = message
  end
end
for j = 1, #msgs, 1000 do
  redis.call('LPUSH', queue, unpack(msgs, j, math.min(j + 999, #msgs)))
  redis.call('RPUSH', jobs, unpack(ids, j, math.min(j + 999, #ids)))
end
redis.call('HSETNX', batch, 'created_at', ARGV[5])
redis.call('HINCRBY', batch, 'total', #ids)
redis.call('HINCRBY', batch, 'ended', 0)
redis.call('HINCRBY', counts, 'queued', #ids)
if seal == '1' then
  redis.call('HSET', batch, 'sealed', '1')
  local ended = tonumber(redis.call('HGET', batch, 'ended'))
  if ended >= tonumber(redis.call('HGET', batch, 'total'))
      and redis.call('HSETNX', batch, 'finished_at', ARGV[5]) == 1
      and redis.call('HGET', batch, 'webhook_url') then
    redis.call('LPUSH', ARGV[6], ARGV[7])
  end
end
return held
"""

# One of a batch's jobs ended. Exactly one caller sees the last job end (HINCRBY is atomic,
# and HSETNX guards the seal race), and only that caller queues the batch.completed webhook,
# inside the same transaction as the job's own transition: nothing in between to crash in.
_JOB_ENDED = """
local ended = redis.call('HINCRBY', KEYS[1], 'ended', 1)
if redis.call('HGET', KEYS[1], 'sealed') == '1'
    and ended >= tonumber(redis.call('HGET', KEYS[1], 'total'))
    and redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[2]) == 1
    and redis.call('HGET', KEYS[1], 'webhook_url') then
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
return ended
"""

# Compare-and-set of a job's poll-chain token (see worker.tasks.poll).
_CAS = """
local cur = redis.call('GET', KEYS[1])
if (cur or '') == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""


@dataclass
class NewJob:
    """A validated job ready to be written: its record JSON and idempotency key."""

    id: str
    record_json: str
    idempotency_key: str | None


class JobStore:
    """Reads and writes job and batch records.

    Args:
        client: a Redis client.
        prefix: the key prefix every key of this deployment starts with.
        queue: the Celery queue that follow-up messages (webhooks) go to.
    """

    def __init__(self, client: redis.Redis, prefix: str, queue: str) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.queue = queue
        self._create = client.register_script(_CREATE)
        self._create_batch = client.register_script(_CREATE_BATCH)
        self._job_ended = client.register_script(_JOB_ENDED)
        self._cas = client.register_script(_CAS)

    @classmethod
    def from_url(cls, url: str, prefix: str, queue: str) -> JobStore:
        return cls(redis.Redis.from_url(url), prefix, queue)

    # --- jobs ---

    def create(
        self, record: JobRecord, message: str, queue: str, idempotency_key: str | None
    ) -> str:
        """Store a new job and its first task message; returns the job id that holds the
        idempotency key (the new one, or an earlier job's)."""
        idem = self.keys.idempotency(idempotency_key) if idempotency_key else ""
        held = self._create(
            keys=[idem, self.keys.job(record.id), queue],
            args=[record.id, record.model_dump_json(), message],
        )
        return _text(held)

    def get(self, job_id: str) -> JobRecord:
        """The job's record.

        Raises:
            JobNotFound: when there is none.
        """
        raw = self.redis.get(self.keys.job(job_id))
        if raw is None:
            raise JobNotFound(job_id)
        return JobRecord.model_validate_json(raw)

    def update(
        self,
        job_id: str,
        change: Callable[[JobRecord], bool | None],
        *,
        then: Callable[[JobRecord], Sequence[tuple[str, str]]] | None = None,
    ) -> JobRecord:
        """Apply change to the record atomically (optimistic locking; retried on conflict).

        `change` mutates the record in place; returning False leaves Redis untouched.
        `then(record)` names (queue, message) pairs to enqueue in the same transaction, so
        that a follow-up (a webhook) cannot be lost to a crash right after the change.
        Workers on several hosts may update one job at once: the WATCH makes the last
        writer re-read instead of overwriting the other's change. A batch's counts move
        with its jobs' statuses in the same transaction.
        """
        key = self.keys.job(job_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise JobNotFound(job_id)
                    record = JobRecord.model_validate_json(raw)
                    before = record.status
                    if change(record) is False:
                        pipe.unwatch()
                        return record
                    record.updated_at = utcnow_iso()
                    pipe.multi()
                    pipe.set(key, record.model_dump_json())
                    if record.batch_id and record.status is not before:
                        self._count_move(pipe, record, before)
                    for queue, message in then(record) if then else ():
                        pipe.lpush(queue, message)
                    pipe.publish(self.keys.events(job_id), record.status.value)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def _count_move(self, pipe: Any, record: JobRecord, before: Any) -> None:
        batch_id = record.batch_id or ""
        counts = self.keys.batch_counts(batch_id)
        pipe.hincrby(counts, before.value, -1)
        pipe.hincrby(counts, record.status.value, 1)
        if record.status in TERMINAL and before not in TERMINAL:
            message = task_message(names.NOTIFY_BATCH, [batch_id], self.queue)
            self._job_ended(
                keys=[self.keys.batch(batch_id), self.queue],
                args=[message, utcnow_iso()],
                client=pipe,
            )

    # --- batches ---

    def create_batch_chunk(
        self,
        batch_id: str,
        jobs: Sequence[NewJob],
        messages: Sequence[str],
        *,
        queue: str,
        first_index: int,
        seal: bool,
        fields: dict[str, str] | None = None,
    ) -> dict[int, str]:
        """Write one chunk of a batch atomically; returns {request index: earlier job id} for
        items whose idempotency key an earlier job held (those got no new job)."""
        notify = task_message(names.NOTIFY_BATCH, [batch_id], self.queue) if seal else ""
        args: list[str] = [
            self.keys.idempotency(""), self.keys.job(""), str(first_index),
            "1" if seal else "0", utcnow_iso(), self.queue, notify,
        ]  # fmt: skip
        args += [
            f"{job.id}\x1f{job.idempotency_key or ''}\x1f{job.record_json}\x1f{message}"
            for job, message in zip(jobs, messages, strict=True)
        ]
        with self.redis.pipeline() as pipe:
            if fields:
                pipe.hset(self.keys.batch(batch_id), mapping=cast(Any, fields))
            self._create_batch(
                keys=[
                    self.keys.batch(batch_id),
                    self.keys.batch_jobs(batch_id),
                    queue,
                    self.keys.batch_counts(batch_id),
                ],
                args=args,
                client=pipe,
            )
            held = pipe.execute()[-1]
        pairs = [_text(x) for x in held]
        return {int(pairs[i]): pairs[i + 1] for i in range(0, len(pairs), 2)}

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
            deduplicated=json.loads(fields.get("deduplicated", "{}")),
            metadata=json.loads(fields.get("metadata", "{}")),
            webhook=WebhookDelivery.model_validate_json(webhook) if webhook else None,
        )

    def set_batch_fields(self, batch_id: str, fields: dict[str, str]) -> None:
        self.redis.hset(self.keys.batch(batch_id), mapping=cast(Any, fields))

    def batch_webhook_url(self, batch_id: str) -> str | None:
        return _text(self.redis.hget(self.keys.batch(batch_id), "webhook_url")) or None

    def batch_cancelled(self, batch_id: str) -> bool:
        return self.redis.hget(self.keys.batch(batch_id), "cancelled") == b"1"

    def batch_job_ids(self, batch_id: str) -> list[str]:
        return [_text(x) for x in self.redis.lrange(self.keys.batch_jobs(batch_id), 0, -1)]

    # --- odds and ends ---

    def swap_poll_token(self, job_id: str, expected: str, new: str) -> bool:
        """Set the job's poll token to new if it is still expected; True when it was."""
        return bool(self._cas(keys=[self.keys.poll_token(job_id)], args=[expected, new]))

    def poll_token(self, job_id: str) -> str:
        return _text(self.redis.get(self.keys.poll_token(job_id)))

    def fix_event_body(self, key: str, body: str) -> str:
        """Keep body under key unless one is kept already; return the kept one."""
        self.redis.set(key, body, nx=True)
        return _text(self.redis.get(key)) or body

    def count_unknown_status(self, word: str) -> None:
        self.redis.hincrby(self.keys.unknown_statuses(), word, 1)

    def record_dead_letter(self, event_id: str, detail: dict[str, Any]) -> None:
        self.redis.hset(self.keys.dead_letters(), event_id, json.dumps(detail))


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
