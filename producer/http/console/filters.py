"""The jobs listing's filters, read from a query string (one place for the list, its live
rows and the bulk actions, which carry the same query)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from producer.core.keys import Principal
from producer.core.records import JobStatus
from producer.core.scan import JobFilter

# The listing's query parameters, in the order its form shows them.
PARAMS = ("status", "tenant", "batch", "provider", "model", "error", "meta_key", "meta_value",
          "within", "from", "to")  # fmt: skip
# "Within the last ...": the time range most people want, one click away.
WITHIN_S = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}


class BadFilter(ValueError):
    """Raised when a filter's value cannot be read (the message names the field)."""


def read(query: dict[str, str], who: Principal, now_s: float | None = None) -> JobFilter:
    """The filter a query asks for, as who may see it: a tenant's key always sees its own
    tenant only, whatever the query says.

    Raises:
        BadFilter: naming the field.
    """
    now_s = time.time() if now_s is None else now_s
    q = {k: v.strip() for k, v in query.items() if k in PARAMS and v and v.strip()}
    statuses: tuple[JobStatus, ...] = ()
    if "status" in q:
        try:
            statuses = (JobStatus(q["status"]),)
        except ValueError:
            raise BadFilter(f"status: one of {', '.join(s.value for s in JobStatus)}") from None
    since_s = _moment(q, "from")
    until_s = _moment(q, "to")
    if "within" in q:
        if q["within"] not in WITHIN_S:
            raise BadFilter(f"within: one of {', '.join(WITHIN_S)}")
        since_s = max(since_s or 0.0, now_s - WITHIN_S[q["within"]])
    tenant = q.get("tenant") if who.admin else who.tenant
    return JobFilter(
        statuses=statuses,
        tenant=tenant,
        batch_id=q.get("batch"),
        provider=q.get("provider"),
        model=q.get("model"),
        error_code=q.get("error"),
        meta_key=q.get("meta_key"),
        meta_value=q.get("meta_value") if "meta_key" in q else None,
        since_s=since_s,
        until_s=until_s,
    )


def _moment(q: dict[str, str], name: str) -> float | None:
    """A datetime-local field's value (UTC, as the page says) in epoch seconds."""
    if name not in q:
        return None
    try:
        moment = datetime.fromisoformat(q[name])
    except ValueError:
        raise BadFilter(f"{name}: a date and time, like 2026-12-06T14:30") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def query_of(params: dict[str, Any]) -> str:
    """The query string of the filter fields set in params."""
    return urlencode({k: params[k] for k in PARAMS if params.get(k)})
