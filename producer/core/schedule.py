"""The durable schedule: when each unfinished job next needs attention.

Every unfinished job has exactly one entry, a member of one lane's sorted set (its score: when
it is next due, by Redis's clock). A job enters at enqueue, in the same script as its record;
its entry moves from lane to lane as its status changes and leaves only when nothing is left to
do for it (its webhook delivered or given up). Broker messages are disposable: a worker's pump
claims due entries (worker/pump.py), which pushes each entry's score forward by a lease, and
finishing the step writes the next due time. A claim that never finishes comes due again when
its lease runs out, whatever was lost: the worker, the message, the task's own exception.

This module is the only writer of the lanes, the leases, the faults, the parked sets and the
submit lane's fair-share state (tenants' ready queues and tags, the deadlines set) and the
callbacks' marks (its scripts are in producer/core/lua/: place, nudge, hasten, extend, claim,
claim_submit), which is what keeps one entry per job: placing an entry in one lane removes it
from every other. The claims also spend the providers' limits (producer/core/limits.py builds
what they may spend, and gives back what a job held: a give-back also forgets the job's owner
and makes a tenant waiting at its ceiling due for a look).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from producer.core.limits import ClaimTerms
from producer.core.names import LANES, Keys, Lane
from producer.core.scripts import Script

# A parked entry's score is its due time plus this: due, but out of every claim's due range
# until its provider has room (lua/claim.lua). Any placement or nudge takes it out.
PARKED_BAND_S = 1e10
# A callback's mark lasts this long: past any poll it could still hasten.
HASTENED_TTL_S = 3600.0
# Due submits one claim takes into their tenants' queues at most: each costs a read and
# decode of its record and three writes (~0.1 ms of Redis on the benchmark's shared host: 1,000
# held Redis for up to 160 ms, which a poll's claim would wait behind). A 10,000-job batch
# released at once is in within 50 claims, a second or two.
INTAKE_PER_CLAIM = 200
# How often a tenant at its max_in_flight is looked at again, at most (one of its jobs giving
# back its slot makes it at once).
CAPPED_RECHECK_S = 1.0


@dataclass(frozen=True)
class FairTerms:
    """How the submit lane's claim shares slots out (Settings.fair_share,
    Settings.priority_aging_s)."""

    enabled: bool
    priority_aging_s: float


def _providers(limits: ClaimTerms) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "cap": p.cap, "rate": p.rate_per_s, "burst": p.burst}
        for p in limits.providers
    ]


class Schedule:
    """Places, moves and reads schedule entries.

    Args:
        client: the Redis holding job records.
        keys: the deployment's keys.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._place = Script(client, "place")
        self._nudge = Script(client, "nudge")
        self._hasten = Script(client, "hasten")
        self._extend = Script(client, "extend")
        self._claim = Script(client, "claim")
        self._claim_submit = Script(client, "claim_submit")

    def place(
        self,
        member: str,
        lane: Lane | None,
        delay_s: float = 0.0,
        *,
        token: str = "",
        client: Any = None,
        keep_faults: bool = False,
        seen: str = "",
    ) -> Any:
        """Make the entry due in delay_s seconds in lane (None: remove it, the job is done).

        Args:
            token: the claim's token; the placement is dropped if another claim holds it.
            client: a pipeline to queue the call on (it then runs in that transaction).
            keep_faults: the placement retries a fault: the member's fault count stands
                (any other placement resets it).
            seen: the callback mark (hastened_marks) the placing step read, if any: a mark
                it did not see makes a poll entry due now.
        """
        index = LANES.index(lane) + 1 if lane is not None else 0
        return self._place(
            leases=self.keys.leases(),
            faults=self.keys.faults(),
            hastened=self.keys.hastened(member),
            lanes=self.keys.schedules(),
            member=member,
            lane=index,
            delay_s=f"{max(0.0, delay_s):.3f}",
            token=token,
            keep_faults="1" if keep_faults else "",
            seen=seen,
            hasten_lane=LANES.index(Lane.POLL) + 1,
            client=client,
        )

    def nudge(self, member: str, client: Any = None) -> Any:
        """Make an unclaimed entry due now (after a cancel)."""
        return self._nudge(
            leases=self.keys.leases(), lanes=self.keys.schedules(), member=member, client=client
        )

    def hasten(self, member: str, ttl_s: float = HASTENED_TTL_S) -> int:
        """A provider's callback said the member's task ended: make its next poll due now
        (lua/hasten.lua: 1 due now, 2 a step holds it and will place it due now, 0 it has no
        poll entry yet: the submit placing it will make it due now)."""
        return int(
            self._hasten(
                leases=self.keys.leases(),
                hastened=self.keys.hastened(member),
                lane=self.keys.schedule(Lane.POLL),
                member=member,
                ttl_s=int(ttl_s),
            )
        )

    def hastened_marks(self, members: Sequence[str]) -> dict[str, str]:
        """The callback marks of the members that have one: member -> when it came (Redis's
        clock, seconds, as text: what a placement passes back as `seen`)."""
        values = self.redis.mget([self.keys.hastened(m) for m in members]) if members else []
        return {
            m: v.decode() if isinstance(v, bytes) else str(v)
            for m, v in zip(members, values, strict=True)
            if v is not None
        }

    def claim(
        self,
        lane: Lane,
        *,
        queue: str,
        lease_s: float,
        dispatch_ahead: int,
        per_message: int,
        token_prefix: str,
        envelope: Sequence[str],
        limits: ClaimTerms,
        fair: FairTerms,
        client: Any = None,
    ) -> Any:
        """Claim the lane's due entries, spending their providers' limits, and push their
        Celery messages onto queue (lua/claim.lua says how, and lua/claim_submit.lua for the
        submit lane, fairly across tenants; worker/pump.py runs them).

        Args:
            queue: the Celery queue the lane's messages go to (at most dispatch_ahead wait).
            lease_s: how long a claimed entry is held before it comes due again.
            per_message: entries per message (a poll batch).
            token_prefix: the claiming process's; each claim's token is it and a counter.
            envelope: the message's six pieces around its body and ids (worker/messages.py).
            limits: what the lane's claim spends at each provider.
            fair: how the submit lane's claim shares slots out.
            client: a pipeline to queue the call on.

        Returns:
            [entries claimed, their total lateness, their worst lateness] (ms).
        """
        if lane is Lane.SUBMIT:
            return self._claim_submit(
                lane=self.keys.schedule(lane),
                legacy_lane=self.keys.legacy_bulk_schedule(),
                leases=self.keys.leases(),
                queue=queue,
                claim_seq=self.keys.claim_seq(),
                routes=limits.routes,
                deadlines=self.keys.deadlines(),
                active=self.keys.fair_active(),
                capped=self.keys.fair_capped(),
                tags=self.keys.fair_tags(),
                vtime=self.keys.fair_vtime(),
                owners=self.keys.fair_owners(),
                reserving=self.keys.fair_reserving(),
                provider_keys=[vars(p) for p in limits.providers],
                lease_s=lease_s,
                dispatch_ahead=dispatch_ahead,
                token_prefix=token_prefix,
                lane_name=lane.value,
                envelope=envelope,
                default_route=limits.default_route,
                parked_band=PARKED_BAND_S,
                hold_s=limits.hold_s,
                fair=int(fair.enabled),
                aging_s=fair.priority_aging_s,
                recheck_s=CAPPED_RECHECK_S,
                intake=INTAKE_PER_CLAIM,
                job_prefix=self.keys.job(""),
                tenant_prefix=self.keys.tenant_prefix(),
                providers=_providers(limits),
                client=client,
            )
        return self._claim(
            lane=self.keys.schedule(lane),
            leases=self.keys.leases(),
            queue=queue,
            claim_seq=self.keys.claim_seq(),
            routes=limits.routes,
            provider_keys=[vars(p) for p in limits.providers],
            lease_s=lease_s,
            dispatch_ahead=dispatch_ahead,
            per_message=per_message,
            token_prefix=token_prefix,
            lane_name=lane.value,
            envelope=envelope,
            limited=int(limits.limited),
            default_route=limits.default_route,
            parked_band=PARKED_BAND_S,
            hold_s=limits.hold_s,
            providers=_providers(limits),
            client=client,
        )

    def extend(
        self, lane: Lane, token: str, members: Sequence[str], lease_s: float, slots: Sequence[str]
    ) -> int:
        """Push the entries still held by token lease_s ahead, and the provider slots they
        hold under their lease (slots: every account's; and their tenants'); returns how
        many are still held."""
        return int(
            self._extend(
                lane=self.keys.schedule(lane),
                leases=self.keys.leases(),
                owners=self.keys.fair_owners(),
                slots=list(slots),
                lease_s=lease_s,
                token=token,
                tenant_prefix=self.keys.tenant_prefix(),
                members=list(members),
            )
        )

    def holders(self, members: Sequence[str]) -> list[Any]:
        """The token of the claim holding each member's entry (None: unclaimed)."""
        return list(self.redis.hmget(self.keys.leases(), list(members)))

    def count_fault(self, member: str) -> int:
        """One more fault in a row for the member's entry; how many it has now."""
        return int(self.redis.hincrby(self.keys.faults(), member, 1))

    def forget_faults(self, member: str, client: Any = None) -> None:
        """The member's fault count starts again (an operator retried its job)."""
        (client or self.redis).hdel(self.keys.faults(), member)

    def entry(self, member: str) -> tuple[Lane, float] | None:
        """(lane, due time) of the member's entry (a parked one's, unparked), or None if it
        has none."""
        with self.redis.pipeline(transaction=False) as pipe:
            for lane in LANES:
                pipe.zscore(self.keys.schedule(lane), member)
            scores = pipe.execute()
        for lane, score in zip(LANES, scores, strict=True):
            if score is not None:
                due = float(score)
                return lane, due - PARKED_BAND_S if due >= PARKED_BAND_S else due
        return None

    def total(self) -> int:
        """How many entries the schedule holds."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self.keys.schedules():
                pipe.zcard(key)
            return sum(int(n) for n in pipe.execute())
