"""Hostile strings at enqueue, through real Redis: every string field of a single request and
of a batch gets arbitrary unicode, control characters, lone surrogates and the separators a
framing could split on. Each is refused with InvalidRequest naming the field (nothing
written), or stored and read back exactly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from producer import InvalidRequest, enqueue, enqueue_batch, get, get_batch
from producer.core.settings import Settings
from tests.e2e.conftest import fresh_prefix

# Bytes a framing might split on or a template might expand, and text Redis, JSON or HTTP
# might mangle.
SPECIALS = ["\x1f", "\x1e", "\x00", "\n", "\r\n", '"', "\\", "%", "%(id)s", "}", "\ud800",
            "\u2028", "\ufeff", "é", "💥", ":", "*"]  # fmt: skip
hostile_text = st.lists(
    st.one_of(st.text(st.characters(exclude_categories=()), max_size=8), st.sampled_from(SPECIALS)),
    max_size=8,
).map("".join)

# Each fuzzed field: where the value goes in a request and where it is read back.
FIELDS = ["model", "prompt", "size", "aspect_ratio", "image_url", "storyboard", "characters",
          "webhook_url", "metadata_key", "metadata_value", "idempotency_key", "extra_key",
          "extra_value"]  # fmt: skip
URL_FIELDS = {"image_url", "webhook_url"}


def _request(field: str, value: str) -> dict[str, Any]:
    req: dict[str, Any] = {"prompt": "a cat", "size": "64x48", "duration": 2}
    if field == "storyboard":
        del req["prompt"], req["duration"]
        req["storyboard"] = [{"prompt": value, "duration": 2}]
    elif field == "characters":
        req["characters"] = [value]
    elif field.startswith(("metadata", "extra")):
        name, part = field.split("_")
        req[name] = {value: "v"} if part == "key" else {"k": value}
    elif field == "size":
        req["size"] = value
    else:
        req[field] = value
    return req


def _stored(field: str, request: dict[str, Any]) -> Any:
    """What the request holds for the fuzzed field (the value read back must equal it)."""
    if field == "storyboard":
        return request["storyboard"][0]["prompt"]
    if field == "characters":
        return request["characters"][0]
    if field.startswith(("metadata", "extra")):
        name, part = field.split("_")
        return next(iter(request[name])) if part == "key" else request[name]["k"]
    return request[field]


def _names_field(error: InvalidRequest, field: str, index: int | None = None) -> bool:
    top = field.split("_")[0] if field.startswith(("metadata", "extra")) else field
    return any(
        p["field"].split(".")[0] == top and (index is None or p.get("index") == index)
        for p in error.errors
    )


@pytest.fixture(scope="module")
def deployment(redis_url: str) -> Iterator[tuple[Settings, redis.Redis]]:
    prefix = fresh_prefix()
    client = redis.Redis.from_url(redis_url)
    yield Settings(broker_url=redis_url, key_prefix=prefix, queue=prefix), client
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def _keys(client: redis.Redis, prefix: str) -> set[bytes]:
    return set(client.scan_iter(f"{prefix}*"))


def _fresh(client: redis.Redis, prefix: str) -> None:
    # An idempotency key hypothesis repeats must not return an earlier example's job.
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def _value(field: str, text: str, as_url: bool) -> str:
    return f"https://hooks.example.com/{text}" if field in URL_FIELDS and as_url else text


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@FUZZ
@given(field=st.sampled_from(FIELDS), text=hostile_text, as_url=st.booleans())
@example(field="idempotency_key", text='k\x1f{"id":"job_x","batch_id":"batch_other"}\x1f',
         as_url=False)  # fmt: skip
@example(field="metadata_value", text="line\r\nX-Amz-Meta-Evil: 1", as_url=False)
def test_any_string_in_a_single_request_is_refused_by_name_or_read_back_exactly(
    deployment, field, text, as_url
):
    s, client = deployment
    _fresh(client, s.key_prefix)
    request = _request(field, _value(field, text, as_url))
    try:
        job_id = enqueue(request, settings=s)
    except InvalidRequest as e:
        assert _names_field(e, field), (field, e.errors)
        assert _keys(client, s.key_prefix) == set()
        return
    record = get(job_id, settings=s)
    assert _stored(field, record.request) == _stored(field, request)
    if field.startswith("metadata"):
        assert record.metadata == request["metadata"]
    if field == "idempotency_key":
        assert enqueue(request, settings=s) == job_id


@FUZZ
@given(field=st.sampled_from(FIELDS), text=hostile_text, as_url=st.booleans(),
       index=st.integers(0, 2))  # fmt: skip
@example(field="idempotency_key", text='k\x1f{"id":"job_x","batch_id":"batch_other"}\x1f',
         as_url=False, index=1)  # fmt: skip
def test_any_string_in_a_batch_item_is_refused_by_index_and_name_or_read_back_exactly(
    deployment, field, text, as_url, index
):
    s, client = deployment
    _fresh(client, s.key_prefix)
    requests = [_request("prompt", f"item {i}") for i in range(3)]
    requests[index] = _request(field, _value(field, text, as_url))
    try:
        batch_id = enqueue_batch(requests, settings=s)
    except InvalidRequest as e:
        assert _names_field(e, field, index), (field, e.errors)
        assert _keys(client, s.key_prefix) == set()
        return
    batch = get_batch(batch_id, settings=s)
    assert batch.total == 3 and len(batch.job_ids) == 3
    for job_id, request in zip(batch.job_ids, requests, strict=True):
        record = get(job_id, settings=s)
        assert record.id == job_id and record.batch_id == batch_id
        assert record.request["prompt" if "prompt" in request else "storyboard"] == request.get(
            "prompt", request.get("storyboard")
        )
    stored = get(batch.job_ids[index], settings=s).request
    assert _stored(field, stored) == _stored(field, requests[index])


@FUZZ
@given(field=st.sampled_from(["webhook_url", "batch_webhook_url", "metadata_key",
                              "metadata_value", "batch_id"]),
       text=hostile_text, as_url=st.booleans())  # fmt: skip
@example(field="batch_id", text="campaign-1", as_url=False)
@example(field="batch_id", text="b:jobs", as_url=False)
def test_any_string_in_a_batch_wide_field_is_refused_by_name_or_read_back_exactly(
    deployment, field, text, as_url
):
    s, client = deployment
    _fresh(client, s.key_prefix)
    value = f"https://hooks.example.com/{text}" if field.endswith("url") and as_url else text
    kwargs: dict[str, Any] = (
        {field: value}
        if field.endswith(("url", "batch_id"))
        else {"metadata": {value: "v"} if field.endswith("key") else {"k": value}}
    )
    try:
        batch_id = enqueue_batch([_request("prompt", "one")], settings=s, **kwargs)
    except InvalidRequest as e:
        assert _names_field(e, field), e.errors
        assert _keys(client, s.key_prefix) == set()
        return
    batch = get_batch(batch_id, settings=s)
    record = get(batch.job_ids[0], settings=s)
    if field == "batch_id":
        assert batch_id == batch.id == record.batch_id == value
    elif field == "webhook_url":
        assert record.request["webhook_url"] == value
    elif field == "batch_webhook_url":
        assert client.hget(f"{s.key_prefix}:batch:{batch_id}", "webhook_url") == value.encode()
    else:
        assert batch.metadata == kwargs["metadata"] == record.metadata
