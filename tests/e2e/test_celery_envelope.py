"""Celery's contract, proven: the message the claim script writes (worker/messages.py inside
worker/pump.py's Lua) against the one Celery's own `send_task` writes for the same task,
both read back raw from a real Redis list, field by field. A Celery or kombu release that
changes the envelope fails here, not in production."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from producer.core.names import LANES, Lane
from producer.core.requests import parse_request
from producer.core.settings import Settings
from producer.core.store import JobStore
from producer.jobs import new_record
from tests.e2e.conftest import fresh_prefix
from worker.config import celery_config
from worker.pump import Pump

# Header values that legitimately differ, each for a reason, and the shape both must have.
ORIGIN = re.compile(r"^[^@\s]+@\S+$")  # "pid@host" (ours) or "gen<pid>@host" (Celery's)
# argsrepr: Celery writes the args' repr; the claim script has no repr of what it claims.
OUR_ARGSREPR = "(claimed from the schedule)"
# Properties that legitimately differ: reply_to (Celery names its app for replies; nothing
# replies to ours: results are ignored), delivery_tag (kombu's uuid; ours the claim's
# token) and body_encoding (kombu's base64; ours none: kombu passes the JSON text through).
DIFFERING_PROPERTIES = {"reply_to", "delivery_tag", "body_encoding"}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def deployment(redis_url: str) -> Iterator[tuple[Settings, JobStore]]:
    prefix = fresh_prefix()
    settings = Settings(key_prefix=prefix, queue=prefix, broker_url=redis_url,
                        api_key="sk-envelope")  # fmt: skip
    st = JobStore(redis.Redis.from_url(redis_url), prefix)
    yield settings, st
    for pattern in (f"{prefix}*", f"_kombu.binding*.{prefix}*"):
        for key in st.redis.scan_iter(pattern):
            st.redis.delete(key)


def _claimed_message(settings: Settings, st: JobStore, lane: Lane) -> dict[str, Any]:
    """What the pump writes for one job due in `lane`, as it lies in Redis."""
    record = new_record(parse_request({"prompt": "x"}), settings)
    st.create(record, None)
    st.schedule.place(record.id, lane)
    assert Pump(st.redis, settings).claim_due()[lane].entries == 1
    (raw,) = st.redis.lrange(lane.queue(settings.queue), 0, -1)
    st.redis.delete(lane.queue(settings.queue))
    return json.loads(raw)


def _celery_message(settings: Settings, st: JobStore, lane: Lane, task_id: str, args: Any):
    """What Celery's own API writes for the same task on the same queue, with the workers'
    configuration (worker/config.py), through kombu's Redis transport."""
    app = Celery("videoqueue")
    app.conf.update(celery_config(settings))
    try:
        app.send_task(lane.task, args=args, queue=lane.queue(settings.queue), task_id=task_id,
                      ignore_result=True)  # fmt: skip
    finally:
        app.close()
    (raw,) = st.redis.lrange(lane.queue(settings.queue), 0, -1)
    st.redis.delete(lane.queue(settings.queue))
    return json.loads(raw)


def _decoded(redis_url: str, message: dict[str, Any]) -> Any:
    """The body as kombu's Redis transport hands it to a Celery worker."""
    with Connection(redis_url) as conn:
        return conn.default_channel.Message(message, channel=conn.default_channel).decode()


@pytest.mark.parametrize("lane", LANES, ids=[lane.value for lane in LANES])
def test_the_pumps_message_is_the_one_celery_writes_for_the_same_task(deployment, redis_url, lane):
    settings, st = deployment
    ours = _claimed_message(settings, st, lane)
    token = ours["headers"]["id"]
    args = _decoded(redis_url, ours)[0]
    theirs = _celery_message(settings, st, lane, token, args)

    # The envelope: the same fields, the same content type and encoding.
    assert ours.keys() == theirs.keys()
    assert ours["content-type"] == theirs["content-type"] == "application/json"
    assert ours["content-encoding"] == theirs["content-encoding"] == "utf-8"

    # Headers: every one Celery writes, with Celery's value, but those named here.
    assert ours["headers"].keys() == theirs["headers"].keys()
    for name, value in theirs["headers"].items():
        if name == "origin":
            assert ORIGIN.match(ours["headers"][name]) and ORIGIN.match(value)
        elif name == "argsrepr":
            assert ours["headers"][name] == OUR_ARGSREPR and isinstance(value, str)
        else:
            assert ours["headers"][name] == value, name
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == token

    # Properties, delivery_info included.
    assert ours["properties"].keys() | {"body_encoding"} == theirs["properties"].keys()
    for name, value in theirs["properties"].items():
        if name not in DIFFERING_PROPERTIES:
            assert ours["properties"][name] == value, name
    assert ours["properties"]["delivery_info"] == {
        "exchange": "",
        "routing_key": lane.queue(settings.queue),
    }
    assert ours["properties"]["correlation_id"] == token
    assert ours["properties"]["reply_to"] == "" and UUID.match(theirs["properties"]["reply_to"])
    assert ours["properties"]["delivery_tag"] == token
    assert UUID.match(theirs["properties"]["delivery_tag"])
    assert "body_encoding" not in ours["properties"]
    assert theirs["properties"]["body_encoding"] == "base64"

    # The body: plain JSON text in ours, base64 in Celery's; kombu decodes both to the same
    # (args, kwargs, embed) that the task is called with.
    assert isinstance(ours["body"], str) and json.loads(ours["body"])
    assert _decoded(redis_url, ours) == _decoded(redis_url, theirs)
    assert len(args) == 4 and args[1] == token and args[2] == lane.value
