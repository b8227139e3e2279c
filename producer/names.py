"""The contract between producer and worker: task names and Redis keys.

The producer reaches the worker by these names only, never by importing worker code.
"""

from __future__ import annotations

SUBMIT = "videoqueue.submit"
POLL = "videoqueue.poll"
FINALIZE = "videoqueue.finalize"
NOTIFY = "videoqueue.notify"


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

    def events(self, job_id: str) -> str:
        """A pub/sub channel that announces each change of a job (for wait())."""
        return f"{self.prefix}:events:{job_id}"

    def dead_letters(self) -> str:
        return f"{self.prefix}:webhooks:dead"
