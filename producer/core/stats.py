"""The deployment's state, read from Redis in one round trip: what `videoqueue stats` prints
and what each worker host's metrics endpoint reports at scrape time (worker/metrics.py).

Every figure here is deployment-wide, not per host: the same on every host that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from producer.core.names import LANES, SUBMIT_LANES, Keys, Lane
from producer.core.providers import account, providers
from producer.core.records import TERMINAL, JobStatus
from producer.core.schedule import PARKED_BAND_S
from producer.core.settings import Settings
from producer.core.store import JobStore


@dataclass
class LaneDepth:
    """One lane of the schedule: entries due now, waiting for a later time, and leased (a
    step is running on them), and how late the most overdue one is."""

    due: int = 0
    waiting: int = 0
    leased: int = 0
    oldest_due_s: float = 0.0


@dataclass
class Stats:
    """A snapshot of the deployment."""

    jobs: dict[str, int]  # jobs in each status now
    finished: dict[str, int]  # jobs that ever ended, by terminal status
    schedule: dict[str, LaneDepth]
    account: str  # the API key's fingerprint the provider limits are kept under
    in_flight: int  # generations holding a provider slot
    in_flight_cap: int | None
    parked: int  # submits due but waiting (for a free provider slot or a rate token)
    dead_letters: int
    unknown_statuses: dict[str, int] = field(default_factory=dict)


def read_stats(store: JobStore, settings: Settings) -> Stats:
    """The deployment's state now (one pipelined round trip, then one for leases)."""
    keys: Keys = store.keys
    # The first (preferred) provider's account: the single provider's without a providers
    # file. TODO(issue 11): one row per account when there are several.
    preferred = providers(settings)[0]
    fingerprint = account(preferred, settings)
    seconds, micros = store.redis.time()
    now = seconds + micros / 1e6
    with store.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.status_counts())
        pipe.hgetall(keys.finished_counts())
        for lane in LANES:
            pipe.zcount(keys.schedule(lane), "-inf", now)
            pipe.zcard(keys.schedule(lane))
            pipe.zrange(keys.schedule(lane), 0, 0, withscores=True)
            # Parked entries are due, waiting for a provider's room (worker/pump.py).
            pipe.zrangebyscore(keys.schedule(lane), PARKED_BAND_S, "+inf", 0, 1, withscores=True)
            pipe.zcount(keys.schedule(lane), PARKED_BAND_S, "+inf")
        pipe.hkeys(keys.leases())
        pipe.zcount(keys.in_flight(fingerprint), now, "+inf")
        pipe.hlen(keys.dead_letters())
        pipe.hgetall(keys.unknown_statuses())
        # Jobs whose records expire count while their records exist (store.py).
        for status in JobStatus:
            pipe.zcount(keys.expiring_status(status.value), int(now * 1000), "+inf")
        found = pipe.execute()
    counts = {_text(k): int(v) for k, v in found[0].items()}
    expiring = dict(zip(JobStatus, found[-len(JobStatus) :], strict=True))
    found = found[: -len(JobStatus)]
    # Ended jobs are counted in the expiring sets alone (the hash's counts of jobs that ended
    # before those existed never drop); jobs enqueued before the counts existed can move a
    # count below zero: shown as 0.
    jobs = {
        s.value: int(expiring[s]) + (0 if s in TERMINAL else max(0, counts.get(s.value, 0)))
        for s in JobStatus
    }
    ended = {_text(k): int(v) for k, v in found[1].items()}
    finished = {s.value: ended.get(s.value, 0) for s in TERMINAL}
    leases, in_flight, dead, unknown = found[2 + 5 * len(LANES) :]
    schedule: dict[str, LaneDepth] = {}
    leased = _leased_by_lane(store, [_text(m) for m in leases], now)
    for i, lane in enumerate(LANES):
        due, total, first, first_parked, parked = found[2 + 5 * i : 7 + 5 * i]
        held = leased.get(lane, 0)
        oldest = now - float(first[0][1]) if first and due else 0.0
        if first_parked:
            oldest = max(oldest, now - (float(first_parked[0][1]) - PARKED_BAND_S))
        due += parked
        schedule[lane.value] = LaneDepth(
            due=int(due), waiting=max(0, int(total) - int(due) - held), leased=held,
            oldest_due_s=max(0.0, oldest),
        )  # fmt: skip
    return Stats(
        jobs=jobs,
        finished=finished,
        schedule=schedule,
        account=fingerprint,
        in_flight=int(in_flight),
        in_flight_cap=preferred.max_in_flight,
        parked=sum(schedule[lane.value].due for lane in SUBMIT_LANES),
        dead_letters=int(dead),
        unknown_statuses={_text(k): int(v) for k, v in unknown.items()},
    )


def _leased_by_lane(store: JobStore, members: list[str], now: float) -> dict[Lane, int]:
    """How many of the leased entries sit in each lane (leases are few: the claims running)."""
    if not members:
        return {}
    with store.redis.pipeline(transaction=False) as pipe:
        for lane in LANES:
            pipe.zmscore(store.keys.schedule(lane), members)
        scores = pipe.execute()
    # A lease pushed its entry's score ahead; one that ran out is due again, not leased.
    return {
        lane: sum(1 for s in lane_scores if s is not None and s > now)
        for lane, lane_scores in zip(LANES, scores, strict=True)
    }


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
