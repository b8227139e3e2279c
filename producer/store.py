"""Job records in Redis: the one place that knows keys, pipelines and atomic transitions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from producer.errors import JobNotFound
from producer.names import Keys
from producer.records import JobRecord, utcnow_iso

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

# Compare-and-set of a job's poll-chain token (see worker.tasks.poll).
_CAS = """
local cur = redis.call('GET', KEYS[1])
if (cur or '') == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""


class JobStore:
    """Reads and writes job records.

    Args:
        client: a Redis client (decode_responses is not required).
        prefix: the key prefix every key of this deployment starts with.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self._create = client.register_script(_CREATE)
        self._cas = client.register_script(_CAS)

    @classmethod
    def from_url(cls, url: str, prefix: str) -> JobStore:
        return cls(redis.Redis.from_url(url), prefix)

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

    def update(self, job_id: str, change: Callable[[JobRecord], bool | None]) -> JobRecord:
        """Apply change to the record atomically (optimistic locking; retried on conflict).

        `change` mutates the record in place; returning False leaves Redis untouched.
        Workers on several hosts may update one job at once: the WATCH makes the last
        writer re-read instead of overwriting the other's change.
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
                    if change(record) is False:
                        pipe.unwatch()
                        return record
                    record.updated_at = utcnow_iso()
                    pipe.multi()
                    pipe.set(key, record.model_dump_json())
                    pipe.publish(self.keys.events(job_id), record.status.value)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def swap_poll_token(self, job_id: str, expected: str, new: str) -> bool:
        """Set the job's poll token to new if it is still expected; True when it was."""
        return bool(self._cas(keys=[self.keys.poll_token(job_id)], args=[expected, new]))

    def poll_token(self, job_id: str) -> str:
        return _text(self.redis.get(self.keys.poll_token(job_id)))

    def fix_event_body(self, job_id: str, body: str) -> str:
        """Keep body as the job's webhook body unless one is kept already; return the kept one."""
        key = self.keys.event_body(job_id)
        self.redis.set(key, body, nx=True)
        return _text(self.redis.get(key)) or body

    def count_unknown_status(self, word: str) -> None:
        self.redis.hincrby(self.keys.unknown_statuses(), word, 1)

    def record_dead_letter(self, job_id: str, detail: dict[str, Any]) -> None:
        self.redis.hset(self.keys.dead_letters(), job_id, json.dumps(detail))


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
