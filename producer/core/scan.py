"""A bounded, filtered scan of the jobs: what the console lists (producer/http/console/).

Read only. It pages the job indexes the store writes with every record (the job index, a
tenant's, a batch's job list) and filters records inside Redis (lua/scan_jobs.lua), reading
at most `window` index entries per page however rare the matches (a page costs the same with
100,000 jobs as with 100), in script calls of SCRIPT_STEP entries each.

Why a bounded scan and not an index per filter: a status index would have to move on every
transition (polls, webhook attempts) of every job, in the transactions of the workers' hot
path, for a listing a person reads now and then; tenant, batch and time range, the filters
that narrow most, are indexed already (the time range by the index's score). A page that
scanned its window without filling says so, and goes on from where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from producer.core.records import JobRecord, JobStatus
from producer.core.scripts import Script
from producer.core.store import JobStore

# Index entries one page reads at most (a page of 50 among 100,000 jobs answers in tens of
# milliseconds: bench/console.py).
SCAN_WINDOW = 2000
# Index entries one script call reads at most: Redis runs a script alone, so a page is read
# in steps of a few milliseconds each, never one long stall of every other client (workers).
SCRIPT_STEP = 250


@dataclass(frozen=True)
class JobFilter:
    """What the listing keeps: every field set must match (None: any)."""

    statuses: tuple[JobStatus, ...] = ()
    tenant: str | None = None
    batch_id: str | None = None
    provider: str | None = None
    model: str | None = None
    error_code: str | None = None
    meta_key: str | None = None
    meta_value: str | None = None
    since_s: float | None = None  # created at or after (epoch seconds)
    until_s: float | None = None  # created at or before (epoch seconds)

    def lua_filters(self) -> dict[str, Any]:
        """The record-level filters, as lua/scan_jobs.lua reads them (unset ones left out)."""
        f: dict[str, Any] = {
            "tenant": self.tenant,
            "provider": self.provider,
            "model": self.model,
            "error_code": self.error_code,
            "meta_key": self.meta_key,
            "meta_value": self.meta_value if self.meta_key else None,
            "batch_id": self.batch_id,
        }
        if self.statuses:
            f["status"] = [s.value for s in self.statuses]
            # As pydantic writes a record (compact JSON): the only writer of records.
            f["status_needles"] = [f'"status":"{s.value}"' for s in self.statuses]
        needles = [json.dumps(v) for k, v in f.items() if k != "status" and _plain(v)]
        if needles:
            f["needles"] = needles
        if self.batch_id is not None:
            # A batch's list has no scores: its time range is read from the records.
            f["created_from"] = _iso(self.since_s)
            f["created_to"] = _iso(self.until_s)
        return {k: v for k, v in f.items() if v is not None}


@dataclass
class ScanPage:
    """One page of a scan: the matches, how many entries were read, where the next starts."""

    jobs: list[JobRecord]
    scanned: int
    next_cursor: str | None  # None: nothing after this page
    stale_cursor: bool = False  # the cursor's job left the index: started again from the top
    filters: dict[str, Any] = field(default_factory=dict)


class JobScan:
    """Filtered pages of a deployment's jobs (one per store)."""

    def __init__(self, st: JobStore) -> None:
        self.store = st
        self._scan = Script(st.redis, "scan_jobs")

    def page(
        self,
        flt: JobFilter,
        *,
        cursor: str | None = None,
        limit: int = 50,
        window: int = SCAN_WINDOW,
    ) -> ScanPage:
        """Up to limit matching jobs after cursor, reading at most window index entries.

        The source is the narrowest index: a batch's job list, else the tenant's index, else
        the job index. The caller checks that a tenant's key asks for its own tenant only.
        """
        keys = self.store.keys
        if flt.batch_id is not None:
            kind, source = "list", keys.batch_jobs(flt.batch_id)
        elif flt.tenant is not None:
            kind, source = "zset", keys.tenant_job_index(flt.tenant)
        else:
            kind, source = "zset", keys.job_index()
        filters = flt.lua_filters()
        if kind == "zset":
            filters.pop("tenant", None)  # the tenant's own index
        args = dict(
            source=source,
            kind=kind,
            job_prefix=keys.job(""),
            since_s="" if flt.since_s is None or kind == "list" else repr(flt.since_s),
            until_s="" if flt.until_s is None or kind == "list" else repr(flt.until_s),
            filters=json.dumps(filters),
        )
        window, limit = max(1, window), max(1, limit)
        raws: list[Any] = []
        scanned, stale = 0, False
        position: str | None = cursor or ""
        while position is not None and scanned < window and len(raws) < limit:
            step = min(SCRIPT_STEP, window - scanned)
            answer = self._scan(cursor=position, window=step, limit=limit - len(raws), **args)
            if answer is None:  # the cursor's job left the index (its record expired)
                if scanned or not position:
                    break  # mid-scan, rare: this page ends here
                stale, position = True, ""
                continue
            next_cursor, read, found = answer
            scanned += int(read)
            raws += found
            position = _text(next_cursor) or None
        return ScanPage(
            jobs=[JobRecord.model_validate_json(raw) for raw in raws],
            scanned=scanned,
            next_cursor=position or None,
            stale_cursor=stale,
            filters=filters,
        )


def _plain(value: Any) -> bool:
    """Whether a value reads the same in any JSON encoder's output (so a text search finds
    it): printable ASCII without the characters encoders escape differently."""
    return (
        isinstance(value, str)
        and value.isascii()
        and value.isprintable()
        and not any(c in value for c in '"\\/<>&')
    )


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    # As records write created_at (records.utcnow_iso), so that text compares as time.
    moment = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")
