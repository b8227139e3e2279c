"""The provider's limits, shared by every worker on every host through Redis.

Celery's own rate_limit counts per worker process, so ten workers would send ten times the
rate. Here one token bucket and one set of in-flight slots per API key live in Redis, and both
are spent where work is handed out: the schedule's claim script (worker/pump.py) claims a
rate-limited step only with a token in hand, and a submit only with a free slot, taken in the
same script. A job that finds no slot simply stays due in its submit lane; single jobs' lane is
served before the batch lane, so a freed slot goes to a single job first. Nothing is parked,
nothing is handed over, and no worker waits.

- Rate: a token bucket refilled by Redis's clock at rate_limit_per_s up to rate_burst.
- Slots: a job takes one when its submit is claimed, under the claim's lease: a submit that
  dies frees its slot when its lease runs out. Once the provider has the job, the slot is
  held until its generation ends (or the job ends), given back in the same transaction as
  that change. A submit that will be retried gives its slot back meanwhile: it holds no
  generation, and it competes for a slot again, in order, when it is due.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from producer.names import RATE_LIMITED, SUBMIT_LANES, Keys, Lane, account_of
from producer.settings import Settings

__all__ = ["ProviderLimits", "account_of"]


class ProviderLimits:
    """The shared rate limit and in-flight cap for one API key.

    Args:
        client: the Redis holding job records.
        settings: rate_limit_per_s, rate_burst, max_in_flight, deadline_s, key prefix.
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.redis = client
        keys = Keys(settings.key_prefix)
        account = account_of(settings.api_key.get_secret_value())
        self.bucket = keys.rate(account)
        self.in_flight = keys.in_flight(account)
        # A slot whose job vanished (it should not happen: every end gives its slot back)
        # is reclaimed once it is older than any job at the provider can be.
        self.stale_after_s = 2 * settings.deadline_s + settings.step_timeout_s

    def claim_terms(self, lane: Lane) -> tuple[list[str], list[Any]]:
        """The claim script's limit keys (slots, bucket; '' for none) and arguments (cap,
        rate, burst) for one lane."""
        s = self.settings
        slots = self.in_flight if lane in SUBMIT_LANES and s.max_in_flight is not None else ""
        rated = lane in RATE_LIMITED and s.rate_limit_per_s is not None
        return (
            [slots, self.bucket if rated else ""],
            [s.max_in_flight or 0, s.rate_limit_per_s or 0, s.rate_burst],
        )

    def hold_for_generation(self, job_id: str, client: Any = None) -> None:
        """Keep the job's slot (if it holds one) while the provider generates its video."""
        until = time.time() + self.stale_after_s
        (client or self.redis).zadd(self.in_flight, {job_id: until}, xx=True, gt=True)

    def release(self, job_id: str, client: Any = None) -> None:
        """Give the job's slot back (a no-op if it holds none), on client's transaction."""
        (client or self.redis).zrem(self.in_flight, job_id)
