"""Request bodies as video API clients send them: a JSON object, or a form (multipart, as
OpenAI's SDK sends its create) whose bracketed names carry objects and lists; each bounded,
a 413 past the bound. Shared by the gateway (producer/http) and the sandbox (ops/sandbox),
which read the same clients."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive

from producer.core.errors import ApiError

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# Past this much over the limit, an oversized body is no longer drained before the 413.
DRAIN_CAP_BYTES = 64 << 20
# "a[b][]" -> "a", "[b][]": the brackets after a form field's name.
_BRACKETS = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")
_LENGTH = re.compile(r"[0-9]{1,18}")
# An index in a form field's name (`a[0]`): small, so that no name makes a long list.
_INDEX = re.compile(r"[0-9]{1,4}")


@dataclass(frozen=True)
class Upload:
    """A file a form carried (read whole: the body's bound bounds it)."""

    filename: str | None
    content_type: str | None
    data: bytes


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, or a 413 (ApiError) when it is over limit_bytes."""
    length = request.headers.get("content-length", "")
    declared = int(length) if _LENGTH.fullmatch(length) else None
    chunks, size = [], 0
    if not (declared is not None and declared > limit_bytes + DRAIN_CAP_BYTES):
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit_bytes:
                chunks.append(chunk)
            elif size > limit_bytes + DRAIN_CAP_BYTES:
                break
            # else: read and drop the rest before answering, because closing on a client that
            # is still sending makes its kernel see a reset, and it never reads the 413.
    if size > limit_bytes or (declared is not None and declared > limit_bytes):
        raise ApiError(
            413,
            f"request body too large: the limit is {limit_bytes} bytes",
            code="request_too_large",
        )
    return b"".join(chunks)


def is_form(request: Request) -> bool:
    """Whether the request's body is a form (multipart or urlencoded)."""
    return request.headers.get("content-type", "").startswith(FORM_TYPES)


def json_object(raw: bytes) -> dict[str, Any]:
    """raw as a JSON object.

    Raises:
        ApiError: a 400 saying what is wrong with it.
    """
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(
            400, f"malformed JSON body: {exc}; send a JSON object", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object", code="invalid_json")
    return body


async def read_json(request: Request, limit_bytes: int) -> dict[str, Any]:
    """The body as a JSON object (ApiError 413 or 400 otherwise)."""
    return json_object(await read_body(request, limit_bytes))


async def read_form(
    request: Request, limit_bytes: int, *, max_files: int = 4, max_fields: int = 200
) -> dict[str, Any]:
    """The form body as an object (see `unflatten`), its files as Uploads.

    Raises:
        ApiError: 413 over limit_bytes; 400 for a form that does not parse, naming the field
            where one is at fault.
    """
    raw = await read_body(request, limit_bytes)
    items: list[tuple[str, Any]] = []
    try:
        async with Request(request.scope, receive=_replaying(raw)).form(
            max_files=max_files, max_fields=max_fields
        ) as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    items.append((name, Upload(value.filename, value.content_type, data)))
                else:
                    items.append((name, value))
    except HTTPException as exc:
        raise ApiError(400, f"malformed form body: {exc.detail}", code="invalid_form") from None
    return unflatten(items)


def unflatten(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Form fields as the object they flatten, the way OpenAI's SDK (and PHP, Rails, qs)
    writes one: `metadata[k]=v` an object, `characters[]=a` a list, `storyboard[][prompt]=...`
    (or `storyboard[0][prompt]`) a list of objects, a name given twice a list.

    Raises:
        ApiError: a 400 naming the field whose parts disagree (`a=1` and `a[b]=2`).
    """
    out: dict[str, Any] = {}
    for name, value in items:
        match = _BRACKETS.match(name)
        head, parts = (match[1], _PART.findall(match[2])) if match else (name, [])
        _put(out, head, parts, value, name)
    return out


def _put(into: dict[str, Any], key: str, parts: list[str], value: Any, name: str) -> None:
    if not parts:
        if key not in into:
            into[key] = value
        elif isinstance(into[key], list) and not isinstance(value, list | dict):
            into[key].append(value)  # a bare name repeated: a list
        elif isinstance(into[key], dict):
            raise _clash(name)
        else:
            into[key] = [into[key], value]
        return
    first, rest = parts[0], parts[1:]
    indexed = bool(_INDEX.fullmatch(first))
    if first == "" or indexed:
        items = into.setdefault(key, [])
        if not isinstance(items, list):
            raise _clash(name)
        if indexed and int(first) > len(items):
            raise ApiError(400, f"form field {name}: index out of order", code="invalid_form",
                           param=name.split("[", 1)[0])  # fmt: skip
        if not rest:
            if first == "" or int(first) == len(items):
                items.append(value)
            else:
                items[int(first)] = value
            return
        if indexed:
            if int(first) == len(items):
                items.append({})
            target = items[int(first)]
        elif items and isinstance(items[-1], dict) and rest[0] not in items[-1]:
            target = items[-1]  # `a[][x]` then `a[][y]`: the same element
        else:
            target = {}
            items.append(target)
        if not isinstance(target, dict):
            raise _clash(name)
        _put(target, rest[0], rest[1:], value, name)
        return
    inner = into.setdefault(key, {})
    if not isinstance(inner, dict):
        raise _clash(name)
    _put(inner, first, rest, value, name)


def _clash(name: str) -> ApiError:
    return ApiError(
        400, f"form field {name} disagrees with another field of the same name",
        code="invalid_form", param=name.split("[", 1)[0],
    )  # fmt: skip


def _replaying(raw: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return receive
