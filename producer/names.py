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

    def events(self, job_id: str) -> str:
        """A pub/sub channel that announces each change of a job (for wait())."""
        return f"{self.prefix}:events:{job_id}"

    def dead_letters(self) -> str:
        return f"{self.prefix}:webhooks:dead"
