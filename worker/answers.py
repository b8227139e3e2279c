"""Reading a provider's answers: every value untrusted until parsed.

Headers and bodies of any shape come out as a ProviderTask with typed, bounded fields, or as a
RetryableError / PermanentError with a str ``code`` and a short message. Where a dialect says
things are (worker/dialect.py) decides what is read; how it is read is the same for all.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from producer.core.errors import PermanentError, RetryableError
from worker.dialect import Dialect, TaskState


@dataclass
class ProviderTask:
    """A provider's answer about one task, in our terms."""

    id: str
    state: TaskState
    raw_status: str | None = None
    progress: int | None = None
    video_url: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    poll_after_s: float | None = None
    # What the provider says it charged or counted (seconds billed, credits, a price, tokens).
    usage: dict[str, float] | None = None
    # What the provider says the task cost, in US dollars, where its dialect reads it.
    cost_usd: float | None = None


# Bounds on what an answer may put into our records, logs and exception messages.
_MESSAGE_CHARS = 500  # a provider's reason for a failure
SNIPPET_CHARS = 200  # raw body text quoted in an exception
_CODE_CHARS = 64
_STATUS_CHARS = 64
_ID_CHARS = 1024
_URL_CHARS = 8192  # signed CDN URLs run to a few KB
ERROR_BODY_BYTES = 64 * 1024  # an error body worth parsing is small; a bigger one is a page
_MAX_DIMENSION = 2**31 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clip(text: str, limit: int = _MESSAGE_CHARS) -> str:
    """One line (no control characters, whitespace runs collapsed) of at most limit chars."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _render(value: Any, limit: int) -> str:
    """A non-string JSON value shown compactly, for a message or a raw status."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


def _finite(value: Any) -> float | None:
    """value as a finite float if it is a number or a numeric string; else None."""
    if isinstance(value, bool):  # True is an int to Python, not a number to a provider
        return None
    if isinstance(value, str):
        value = value.strip()
        if len(value) > 64:
            return None
    elif not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _wait_s(value: str | None, per_second: float = 1.0) -> float | None:
    """A non-negative finite wait from a header counting seconds (or ms, per_second=1000)."""
    number = _finite(value)
    if number is None or number < 0:
        return None
    return number / per_second


def retry_after_s(headers: httpx.Headers) -> float | None:
    """The server's wait hint: retry-after-ms, then Retry-After (seconds or an HTTP date).

    Never raises. Garbage, negative, NaN or infinite values and dates without a time zone are
    ignored (None); a date in the past is 0. Huge values come back as they are (finite):
    capping is the caller's policy.
    """
    if (ms := _wait_s(headers.get("retry-after-ms"), 1000)) is not None:
        return ms
    value = headers.get("retry-after")
    if not value:
        return None
    if (seconds := _wait_s(value)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # a local time of unknown zone: hours off either way
            return None
        wait_s = when.timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, wait_s) if math.isfinite(wait_s) else None


def _code(value: Any) -> str | None:
    """A provider's error code as a short str: numbers as their digits; None if not a code."""
    if isinstance(value, str):
        return clip(value, _CODE_CHARS) or None
    if isinstance(value, bool):  # true/false names no error
        return None
    if isinstance(value, int):
        return str(value) if -(10**18) < value < 10**18 else None
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else clip(repr(value), _CODE_CHARS)
    return None  # null, objects and lists identify nothing


def _text(value: Any) -> str:
    """A message field as one bounded line; "" when the field says nothing."""
    if not value:
        return ""
    if isinstance(value, str):
        return clip(value)
    return _render(value, _MESSAGE_CHARS)


# Where providers put why a task failed, in the order tried (provider-vocabularies.md, "Why a
# task failed"): new-api's fail_reason, Azure's and Luma's failure_reason, Runway's failure,
# Kling's task_status_msg, MiniMax's base_resp.status_msg, then the generic ones.
_REASON_FIELDS = (
    ("fail_reason", "code"),
    ("failure_reason", "code"),
    ("failure", "failureCode"),
    ("task_status_msg", "code"),
    ("base_resp.status_msg", "base_resp.status_code"),
    ("message", "code"),
    ("detail", "code"),
)


def at(body: Any, path: str) -> Any:
    """The value at a dotted path ("a.b[0].c") in a JSON value; None where it does not lead.

    Never raises: a missing key, an index past the end or a step into a non-container is None.
    """
    value = body
    for step in path.replace("[", ".[").split("."):
        if not step:
            continue
        if step.startswith("["):
            index = step.strip("[]")
            if not isinstance(value, list) or not index.isdigit() or int(index) >= len(value):
                return None
            value = value[int(index)]
        elif isinstance(value, dict):
            value = value.get(step)
        else:
            return None
    return value


def error_message(body: Any, fallback: str) -> tuple[str | None, str]:
    """(code, message) from whichever field a provider uses for why it failed.

    Never raises, whatever JSON value body is. The code is a str of at most 64 characters or
    None: a numeric code becomes its digits ({"code": 40001} -> "40001"); booleans, objects
    and lists are no code (None). The message is one line of at most 500 characters; a
    non-string message is shown as compact JSON.
    """
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = _code(err.get("code")) or _code(err.get("type"))
            return code, _text(err.get("message")) or clip(str(fallback))
        if isinstance(err, str) and err.strip():
            return None, clip(err)
        for field, code_field in _REASON_FIELDS:
            if text := _text(at(body, field)):
                return _code(at(body, code_field)), text
    return None, clip(str(fallback))


def says_task_not_found(body: Any) -> bool:
    """True if the answer carries new-api's "task_not_exist", at top level or one level in."""
    if not isinstance(body, dict):
        return False
    places = (body, body.get("error"), body.get("data"))
    return any(
        isinstance(place, dict)
        and isinstance(place.get("code"), str)
        and place["code"].strip().lower() == "task_not_exist"
        for place in places
    )


def http_url(value: Any) -> str | None:
    """value if it is an absolute http(s) URL we can fetch; else None."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or len(url) > _URL_CHARS or _CONTROL.search(url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.hostname else None


def _file_url(value: Any) -> str | None:
    """The video's URL from a string, a list of strings, or an object with "url"."""
    if isinstance(value, dict):
        value = value.get("url")
    if isinstance(value, list):
        return next((url for item in value if (url := http_url(item))), None)
    return http_url(value)


def _percent(value: Any) -> float | None:
    """A progress figure as a number ("45%" too); None if it is none."""
    if isinstance(value, str):
        value = value.strip().removesuffix("%")
    return _finite(value)


def _progress(value: Any) -> int | None:
    number = _finite(value)
    # Truncated, not rounded: 99.6 % is not done.
    return None if number is None else int(min(100.0, max(0.0, number)))


def _dimension(value: Any) -> int | None:
    number = _finite(value)
    if number is None or not number.is_integer() or not 0 < number <= _MAX_DIMENSION:
        return None
    return int(number)


def _duration_s(value: Any) -> float | None:
    number = _finite(value)
    return number if number is not None and number > 0 else None


def task_id_of(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value) if -(10**18) < value < 10**18 else ""
    if not isinstance(value, str):
        return None
    text = value.strip()
    ok = text and len(text) <= _ID_CHARS and not _CONTROL.search(text)
    return text if ok else None


def _status(body: dict[str, Any], dialect: Dialect) -> tuple[TaskState, str | None]:
    """The state and the raw word (bounded) from the dialect's first status field there is.

    With no status field: a dialect's boolean done flag (Google's long-running operations:
    true, with "error" when it failed), else what the dialect says no status means (routers
    relaying another provider answer first with nothing at all: still pending).
    """
    answer = dialect.answer
    raw = next(
        (v for f in answer.status if (v := at(body, f)) is not None and v != ""),
        None,
    )
    if raw is None:
        done = at(body, answer.done_flag) if answer.done_flag else None
        if done is True:
            failed = body.get("error") not in (None, "", {})
            return (TaskState.FAILED if failed else TaskState.DONE), None
        if done is False:
            return TaskState.RUNNING, None
        return TaskState(answer.no_status), None
    if isinstance(raw, str):
        return dialect.state_of(raw), clip(raw, _STATUS_CHARS)
    return TaskState.UNKNOWN, _render(raw, _STATUS_CHARS)


def _unwrapped(body: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    """The task inside a wrapper the dialect names (some routers and Kling send
    {"code":..., "data": {...}}, DashScope {"request_id":..., "output": {"task_status":...}}),
    when the top level has no status of its own."""
    fields = dialect.answer.status
    if any(at(body, f) is not None for f in fields):
        return body
    for wrapper in dialect.answer.unwrap:
        inner = body.get(wrapper)
        if isinstance(inner, dict) and any(at(inner, f) is not None for f in fields):
            return inner
    return body


def _first(body: Any, paths: list[str], parse: Any) -> Any:
    """parse() of the first value at paths that parses (not None); else None."""
    return next((v for path in paths if (v := parse(at(body, path))) is not None), None)


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def route_of(response: httpx.Response) -> str:
    try:
        request = response.request
    except RuntimeError:  # a Response built without its request
        return "the provider"
    return f"{request.method} {request.url.path}"


def content_type(response: httpx.Response) -> str:
    return clip(response.headers.get("content-type") or "none", 80)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def same_origin(a: str, b: str) -> bool:
    try:
        return _origin(a) == _origin(b)
    except ValueError:  # a port out of range: no origin, so not the API's
        return False


def read_task(response: httpx.Response, dialect: Dialect, task_id: str, route: str) -> ProviderTask:
    """A status answer in the dialect's shape, as a ProviderTask (error text not yet scrubbed).

    Raises:
        RetryableError: code "bad_response" (not JSON, not an object).
        PermanentError: code "task_not_found".
    """
    try:
        body = response.json()
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise RetryableError(
            f"{route}: the answer is not JSON (content type {content_type(response)!r})",
            code="bad_response",
            status_code=response.status_code,
        ) from None
    if not isinstance(body, dict):
        raise RetryableError(
            f"{route}: the answer is {_json_kind(body)}, not a JSON object",
            code="bad_response",
            status_code=response.status_code,
        )
    if says_task_not_found(body):
        raise PermanentError(
            f"{route}: the provider has no task {task_id!r}"
            if task_id
            else f"{route}: the provider has no such task",
            code="task_not_found",
            status_code=response.status_code,
        )
    answer = dialect.answer
    whole, body = body, _unwrapped(body, dialect)
    state, raw_status = _status(body, dialect)
    code, message = _reason(body, dialect)
    progress = _first(body, answer.progress, _percent)
    return ProviderTask(
        id=_first(body, answer.id, _url_path if answer.id_from_url else task_id_of) or task_id,
        state=state,
        raw_status=raw_status,
        progress=None if progress is None else _progress(progress * answer.progress_scale),
        video_url=_first(body, answer.file_url, _file_url),
        width=_first(body, answer.width, _dimension),
        height=_first(body, answer.height, _dimension),
        duration_s=_first(body, answer.duration, _duration_s),
        error_code=code,
        error_message=message or None,
        poll_after_s=poll_after_s(response.headers),
        usage=_usage(whole, body, answer.usage),
        cost_usd=_cost_usd(whole, body, answer.cost),
    )


def _reason(body: dict[str, Any], dialect: Dialect) -> tuple[str | None, str]:
    reasons = dialect.answer.reasons
    if reasons is None:
        return error_message(body, "")
    for reason in reasons:
        if text := _text(at(body, reason.message)):
            return (_code(at(body, reason.code)) if reason.code else None), text
    return None, ""


def poll_after_s(headers: httpx.Headers) -> float | None:
    """OpenAI's poll hint, else the retry hints; finite and non-negative, or None."""
    if (hint := _wait_s(headers.get("openai-poll-after-ms"), 1000)) is not None:
        return hint
    return retry_after_s(headers)


def read_prefix(response: httpx.Response, limit: int) -> bytes:
    """Up to limit bytes of a streamed body, leaving the rest unread."""
    head = bytearray()
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    return bytes(head[:limit])


_USAGE_FIELDS = 16


def _usage(whole: Any, body: Any, paths: list[str]) -> dict[str, float] | None:
    """The numbers at the dialect's usage paths, by name: a number is named by its path's last
    field ("usage.cost" -> cost), an object gives its numeric fields; at most 16, names bounded.
    A path starting "$." is read from the whole answer, not the unwrapped task. None when the
    answer reports none."""
    found: dict[str, float] = {}
    for path in paths:
        value = at(whole, path[2:]) if path.startswith("$.") else at(body, path)
        name = path.rsplit(".", 1)[-1]
        items = value.items() if isinstance(value, dict) else [(name, value)]
        for key, item in items:
            number = _finite(item)
            if isinstance(key, str) and number is not None and len(found) < _USAGE_FIELDS:
                found[clip(key, _CODE_CHARS)] = number
    return found or None


# A task's cost above this is not believed (a provider's unit mix-up, or garbage).
_MAX_COST_USD = 100_000.0


def _cost_usd(whole: Any, body: Any, paths: list[str]) -> float | None:
    """The task's cost in US dollars at the first of the dialect's cost paths that holds a
    number from 0 to _MAX_COST_USD ("$." reads the whole answer); None when none does."""
    for path in paths:
        number = _finite(at(whole, path[2:]) if path.startswith("$.") else at(body, path))
        if number is not None and 0 <= number <= _MAX_COST_USD:
            return round(number, 6)
    return None


def _url_path(value: Any) -> str | None:
    """The path of an absolute URL, without its leading slash, as a task id (fal names a
    request by its URLs); None if value is not such a URL."""
    url = http_url(value)
    return task_id_of(urlsplit(url).path.strip("/")) if url else None


def unwrapped_body(response: httpx.Response, dialect: Dialect) -> dict[str, Any]:
    """An answer already read by read_task, unwrapped the same way (an object, or {})."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return {}
    return _unwrapped(body, dialect) if isinstance(body, dict) else {}


def first_file_url(response: httpx.Response, paths: list[str]) -> str | None:
    """The first file URL at paths in a JSON answer; None if there is none (or no JSON)."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return None
    return _first(body, paths, _file_url)
