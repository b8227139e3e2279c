"""The contract between producer and worker: task names and Redis keys.

The producer reaches the worker by these names only, never by importing worker code.
"""

from __future__ import annotations

SUBMIT = "videoqueue.submit"
POLL = "videoqueue.poll"
FINALIZE = "videoqueue.finalize"
NOTIFY = "videoqueue.notify"
NOTIFY_BATCH = "videoqueue.notify_batch"


def bulk_queue(queue: str) -> str:
    """The queue batch jobs start on, so that a single job is not stuck behind a batch."""
    return f"{queue}.bulk"


class Keys:
    """Every Redis key videoqueue writes, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def poll_token(self, job_id: str) -> str:
        """The token of the job's one live poll chain."""
        return f"{self.prefix}:job:{job_id}:poll"

    def event_body(self, job_id: str) -> str:
        """The job's webhook body, fixed at its first delivery attempt."""
        return f"{self.prefix}:job:{job_id}:event"

    def unknown_statuses(self) -> str:
        """A hash counting status words no vocabulary knew."""
        return f"{self.prefix}:stats:unknown_status"

    def batch(self, batch_id: str) -> str:
        """A hash: total, ended, created_at, finished_at, webhook, metadata, ..."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """A list of the batch's job ids, in request order."""
        return f"{self.prefix}:batch:{batch_id}:jobs"

    def batch_counts(self, batch_id: str) -> str:
        """A hash: job status -> number of the batch's jobs in it."""
        return f"{self.prefix}:batch:{batch_id}:counts"

    def in_flight(self, account: str) -> str:
        """A sorted set of the jobs holding a provider slot (score: when they took it)."""
        return f"{self.prefix}:limits:{account}:in_flight"

    def waiting(self, account: str, lane: str) -> str:
        """Submit messages of jobs waiting for a provider slot ("interactive" before "bulk")."""
        return f"{self.prefix}:limits:{account}:waiting:{lane}"

    def rate(self, account: str) -> str:
        """The token bucket of the shared request rate."""
        return f"{self.prefix}:limits:{account}:rate"

    def deferred(self) -> str:
        """A sorted set of deferred task messages by due time (see worker/deferred.py)."""
        return f"{self.prefix}:deferred"

    def deferred_messages(self) -> str:
        """A hash: deferred message id -> its queue and message."""
        return f"{self.prefix}:deferred:messages"

    def events(self, job_id: str) -> str:
        """A pub/sub channel that announces each change of a job (for wait())."""
        return f"{self.prefix}:events:{job_id}"

    def dead_letters(self) -> str:
        return f"{self.prefix}:webhooks:dead"
