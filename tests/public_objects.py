"""Checks that data is a public object as published (producer/core/schema/)."""

from __future__ import annotations

from typing import Any

import jsonschema

from producer.core.schemas import schema

# The scheduler's counters, which issue 16's contract keeps out of webhooks and status --json.
SCHEDULER_FIELDS = frozenset(
    {
        "polls",
        "polled_s",
        "progress_s",
        "estimate_s",
        "recoveries",
        "copy_attempts",
        "fetch_failures",
        "url_refusals",
        "deadline_unix_s",
    }
)


def assert_public(data: dict[str, Any], name: str) -> None:
    """`data` is public object `name` (job, batch): valid against its published schema, with
    no field the schema does not name, so none of the scheduler's either."""
    closed = {**schema(name), "additionalProperties": False}
    jsonschema.Draft202012Validator(closed).validate(data)
    assert not SCHEDULER_FIELDS & data.keys()
