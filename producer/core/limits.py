"""The providers' limits, shared by every worker on every host through Redis.

Celery's own rate_limit counts per worker process, so ten workers would send ten times the
rate. Here one token bucket and one set of in-flight slots per account (API key fingerprint)
live in Redis, and both are spent where work is handed out: the schedule's claim script
(lua/claim.lua, run by Schedule.claim with the terms this module builds) claims a
rate-limited step only with a token in hand, and a submit only with a free slot, taken in the
same script at the first provider of the job's route that has both. A submit that finds none
waits in its tenant's queue, and freed slots go to tenants by weight, within a tenant by
priority (lua/claim_submit.lua). Nothing is handed over, and no worker waits.

- Rate: a token bucket per account refilled by Redis's clock at the provider's
  rate_limit_per_s up to its rate_burst.
- Slots: a job takes one when its submit is claimed, under the claim's lease: a submit that
  dies frees its slot when its lease runs out. A job polled without one (an operator's
  retry of a failed job whose task still runs) takes one at its poll's claim, held for its
  generation. Once the provider has the job, the slot is
  held until its generation ends (or the job ends), given back in the same transaction as
  that change. A submit that will be retried gives its slot back meanwhile: it holds no
  generation, and it competes for a slot again, in order, when it is due.
- Routes: job -> the providers its work may go to, in order of preference (producer/core/
  providers.py decides them, the submit step writes them, the claim script cuts them).
- Tenants: every job holding a slot (or claimed for a submit) is noted in its tenant's
  in-flight set too, held and given back with its slot: a tenant's max_in_flight counts it
  across every provider. Giving one back makes a tenant waiting at its ceiling due for a look.
- Accounts: providers-file entries that share a key share one cap and one bucket; where
  their limits differ, the strictest of them holds for all.

This module is the only writer of the slots, tenants' in-flight sets and routes outside the
claim scripts, which alone spend tokens and park entries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from producer.core.names import RATE_LIMITED, SUBMIT_LANES, Keys, Lane, account_of
from producer.core.providers import DEFAULT_PROVIDER, Provider, account, providers
from producer.core.settings import Settings

__all__ = ["ClaimTerms", "ProviderLimits", "ProviderTerms", "account_of"]


@dataclass(frozen=True)
class ProviderTerms:
    """What a lane's claim may spend at one provider: its account's keys ('' for none in the
    lane) and limits."""

    name: str
    slots: str  # the account's in-flight slots, '' if the lane takes none there
    bucket: str  # the account's rate bucket, '' if the lane spends no token there
    parked_token: str  # the lane's entries waiting for a token there, '' without a bucket
    parked_slot: str  # the lane's entries waiting for a slot there, '' without slots
    cap: int
    rate_per_s: float
    burst: int


@dataclass(frozen=True)
class ClaimTerms:
    """The limits one lane's claim spends (lua/claim.lua)."""

    routes: str
    limited: bool  # some provider has slots or a bucket in this lane
    default_route: str  # '' none: an unrouted job is claimed as is
    hold_s: float  # how long a slot taken at the claim is held
    providers: list[ProviderTerms]


@dataclass(frozen=True)
class AccountLimits:
    """The limits of one account (API key), whichever of its entries a job goes through."""

    max_in_flight: int | None
    rate_limit_per_s: float | None
    rate_burst: int


def account_limits(entries: list[Provider]) -> AccountLimits:
    """The limits of the entries that share one key: the strictest each of them sets."""
    caps = [p.max_in_flight for p in entries if p.max_in_flight is not None]
    rated = [p for p in entries if p.rate_limit_per_s is not None] or entries
    rates = [p.rate_limit_per_s for p in rated if p.rate_limit_per_s is not None]
    return AccountLimits(
        max_in_flight=min(caps) if caps else None,
        rate_limit_per_s=min(rates) if rates else None,
        rate_burst=min(p.rate_burst for p in rated),
    )


class ProviderLimits:
    """The shared rate limits and in-flight caps of every provider, and the jobs' routes.

    Args:
        client: the Redis holding job records.
        settings: the providers (producer/core/providers.py), deadline_s, key prefix.
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.redis = client
        self.keys = Keys(settings.key_prefix)
        self.providers = providers(settings)
        self.accounts = {p.name: account(p, settings) for p in self.providers}
        self.account_limits = {
            acc: account_limits([p for p in self.providers if self.accounts[p.name] == acc])
            for acc in set(self.accounts.values())
        }
        # Every account's slots: a job's slot is given back wherever it is held.
        self.slot_keys = sorted({self.keys.in_flight(a) for a in self.accounts.values()})
        # The first provider's (the single provider's, without a providers file).
        self.in_flight = self.keys.in_flight(self.accounts[self.providers[0].name])
        self.routes = self.keys.routes()
        # Without a providers file every job goes to the one provider; with one, a job's
        # submit step routes it first (by its model and the provider it names).
        self.default_route = DEFAULT_PROVIDER if settings.providers_file is None else ""
        # A slot whose job vanished (it should not happen: every end gives its slot back)
        # is reclaimed once it is older than any job at the provider can be.
        self.stale_after_s = 2 * settings.deadline_s + settings.step_timeout_s

    def claim_terms(self, lane: Lane) -> ClaimTerms:
        """What one lane's claim spends, provider by provider."""
        submit = lane in SUBMIT_LANES
        rated = lane in RATE_LIMITED
        # A poll takes a slot only for a job that holds none (one an operator retried into
        # polling): every generation at the provider counts against its cap.
        slotted = submit or lane is Lane.POLL
        terms = []
        for p in self.providers:
            acc = self.accounts[p.name]
            lim = self.account_limits[acc]
            capped = slotted and lim.max_in_flight is not None
            slots = self.keys.in_flight(acc) if capped else ""
            bucket = self.keys.rate(acc) if rated and lim.rate_limit_per_s is not None else ""
            terms.append(
                ProviderTerms(
                    name=p.name,
                    slots=slots,
                    bucket=bucket,
                    parked_token=self.keys.parked(lane, acc, "token") if bucket else "",
                    parked_slot=self.keys.parked(lane, acc, "slot") if slots else "",
                    cap=lim.max_in_flight or 0,
                    rate_per_s=lim.rate_limit_per_s or 0,
                    burst=lim.rate_burst,
                )
            )
        return ClaimTerms(
            routes=self.routes,
            limited=any(t.slots or t.bucket for t in terms),
            default_route=self.default_route,
            # A submit's slot is held under its claim's lease until the provider has the
            # job; a poll's, for the generation (as hold_for_generation holds it).
            hold_s=self.settings.lease_s if submit else self.stale_after_s,
            providers=terms,
        )

    def hold_for_generation(self, job_id: str, tenant: str, client: Any = None) -> None:
        """Keep the job's slot (if it holds one) while the provider generates its video."""
        until = time.time() + self.stale_after_s
        for key in [*self.slot_keys, self.keys.tenant_in_flight(tenant)]:
            (client or self.redis).zadd(key, {job_id: until}, xx=True, gt=True)

    def release(self, job_id: str, tenant: str, client: Any = None) -> None:
        """Give the job's slot back (a no-op if it holds none), on client's transaction; its
        tenant, if waiting at its ceiling, is looked at by the next claim."""
        c = client or self.redis
        for key in self.slot_keys:
            c.zrem(key, job_id)
        c.zrem(self.keys.tenant_in_flight(tenant), job_id)
        c.hdel(self.keys.fair_owners(), job_id)
        c.zadd(self.keys.fair_capped(), {tenant: 0}, xx=True)

    def route(self, job_id: str) -> list[str] | None:
        """The providers the job's work may go to, in order; None if it has no route."""
        raw = self.redis.hget(self.routes, job_id)
        if raw is None:
            return [DEFAULT_PROVIDER] if self.default_route else None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return [name for name in text.split(",") if name]

    def set_route(self, job_id: str, names: list[str], client: Any = None) -> None:
        """Send the job's next claims to these providers, in this order."""
        (client or self.redis).hset(self.routes, job_id, ",".join(names))

    def forget_route(self, job_id: str, client: Any = None) -> None:
        """The job needs no provider any more (it is past its polls)."""
        (client or self.redis).hdel(self.routes, job_id)
