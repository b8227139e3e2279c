"""The video provider's API: both request formats, every status vocabulary, errors sorted
into "try again later" and "give up".

The API key is sent only to the API's own origin. It never appears in a log line, an
exception or a record: errors carry the provider's message and the HTTP status, nothing
from our request headers.

Every answer is untrusted input: headers and bodies of any shape come out as a ProviderTask
with typed, bounded fields, or as a RetryableError / PermanentError with a str `code` and a
short message. Nothing else escapes, so no answer can strand a job.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from producer.errors import PermanentError, RetryableError
from producer.requests import ASPECT_RATIOS, VideoRequest
from producer.settings import ApiFormat, Settings

log = structlog.get_logger(__name__)


class TaskState(StrEnum):
    """What a provider's status word means."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"


# Every word seen in the wild (shared/reference/provider-vocabularies.md), lower-cased.
_WORDS = {
    TaskState.WAITING: "queued pending submitted not_start preparing created starting"
    " preprocessing unknown in_queue",
    TaskState.RUNNING: "processing in_progress running generating",
    TaskState.DONE: "completed complete success succeeded finished",
    TaskState.FAILED: "failed failure fail error cancelled canceled expired timeout",
}
VOCABULARY: dict[str, TaskState] = {
    word: state for state, words in _WORDS.items() for word in words.split()
}


def map_status(word: Any) -> TaskState:
    """The meaning of a provider's status word, case-insensitively; UNKNOWN if unheard of."""
    if not isinstance(word, str):
        return TaskState.UNKNOWN
    return VOCABULARY.get(word.strip().lower(), TaskState.UNKNOWN)


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


# Bounds on what an answer may put into our records, logs and exception messages.
_MESSAGE_CHARS = 500  # a provider's reason for a failure
_SNIPPET_CHARS = 200  # raw body text quoted in an exception
_CODE_CHARS = 64
_STATUS_CHARS = 64
_ID_CHARS = 1024
_URL_CHARS = 8192  # signed CDN URLs run to a few KB
_ERROR_BODY_BYTES = 64 * 1024  # an error body worth parsing is small; a bigger one is a page
_MAX_DIMENSION = 2**31 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clip(text: str, limit: int = _MESSAGE_CHARS) -> str:
    """One line (no control characters, whitespace runs collapsed) of at most limit chars."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _render(value: Any, limit: int) -> str:
    """A non-string JSON value shown compactly, for a message or a raw status."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        text = f"<{type(value).__name__}>"
    return _clip(text, limit)


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
        return _clip(value, _CODE_CHARS) or None
    if isinstance(value, bool):  # true/false names no error
        return None
    if isinstance(value, int):
        return str(value) if -(10**18) < value < 10**18 else None
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else _clip(repr(value), _CODE_CHARS)
    return None  # null, objects and lists identify nothing


def _text(value: Any) -> str:
    """A message field as one bounded line; "" when the field says nothing."""
    if not value:
        return ""
    if isinstance(value, str):
        return _clip(value)
    return _render(value, _MESSAGE_CHARS)


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
            return code, _text(err.get("message")) or _clip(str(fallback))
        if isinstance(err, str) and err.strip():
            return None, _clip(err)
        for field in ("fail_reason", "failure_reason", "message", "detail"):
            if text := _text(body.get(field)):
                return _code(body.get("code")), text
    return None, _clip(str(fallback))


def _says_task_not_found(body: Any) -> bool:
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


def _http_url(value: Any) -> str | None:
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
        return next((url for item in value if (url := _http_url(item))), None)
    return _http_url(value)


def _progress(value: Any) -> int | None:
    if isinstance(value, str):
        value = value.strip().removesuffix("%")
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


def _task_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value) if -(10**18) < value < 10**18 else ""
    if not isinstance(value, str):
        return None
    text = value.strip()
    ok = text and len(text) <= _ID_CHARS and not _CONTROL.search(text)
    return text if ok else None


def _status(body: dict[str, Any]) -> tuple[TaskState, str | None]:
    """The state and the raw word (bounded) from "status" or "state"; UNKNOWN if neither."""
    raw = next(
        (body[f] for f in ("status", "state") if body.get(f) is not None and body[f] != ""),
        None,
    )
    if raw is None:
        # Some providers relayed through routers answer first with no status: still pending,
        # and UNKNOWN keeps the job polling until its deadline.
        return TaskState.UNKNOWN, None
    if isinstance(raw, str):
        return map_status(raw), _clip(raw, _STATUS_CHARS)
    return TaskState.UNKNOWN, _render(raw, _STATUS_CHARS)


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _route(response: httpx.Response) -> str:
    try:
        request = response.request
    except RuntimeError:  # a Response built without its request
        return "the provider"
    return f"{request.method} {request.url.path}"


def _content_type(response: httpx.Response) -> str:
    return _clip(response.headers.get("content-type") or "none", 80)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def same_origin(a: str, b: str) -> bool:
    try:
        return _origin(a) == _origin(b)
    except ValueError:  # a port out of range: no origin, so not the API's
        return False


class ProviderClient:
    """Talks to the video API.

    Args:
        settings: API base URL, key, format and timeouts.
        http: an httpx.Client to use (one per worker process); made if not given.
    """

    def __init__(self, settings: Settings, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self.base_url = settings.api_base_url.rstrip("/")
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(settings.api_timeout_s, connect=settings.api_connect_timeout_s),
            follow_redirects=False,
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    def _scrub(self, text: str) -> str:
        """text without the API key, should a provider echo it back."""
        key = self.settings.api_key.get_secret_value()
        return text.replace(key, "[redacted]") if key else text

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; raises RetryableError or PermanentError on anything but 2xx.

        A success is read up to 1 MiB and within api_timeout_s in all (a bigger one, an
        endless one, one that drips, is a retryable "bad_response": no status answer is that
        big or that slow, and reading on would hold the worker or exhaust its memory); of an
        error body only the first 64 KiB are read.
        """
        success_cap_bytes = 1 << 20
        headers = {**self._auth(), **kwargs.pop("headers", {})}
        try:
            with self.http.stream(
                method, self.base_url + path, headers=headers, **kwargs
            ) as response:
                if response.is_success:
                    read_by = time.monotonic() + self.settings.api_timeout_s
                    body_bytes = bytearray()
                    for chunk in response.iter_bytes():
                        body_bytes += chunk
                        if len(body_bytes) > success_cap_bytes or time.monotonic() > read_by:
                            raise RetryableError(
                                f"{method} {path}: the answer is over {success_cap_bytes} "
                                f"bytes or took over {self.settings.api_timeout_s:g} s",
                                code="bad_response",
                                status_code=response.status_code,
                            )
                    # The bytes are decoded already: the copy drops the framing headers.
                    framing = {"content-encoding", "content-length", "transfer-encoding"}
                    return httpx.Response(
                        response.status_code,
                        headers=[
                            (k, v)
                            for k, v in response.headers.multi_items()
                            if k.lower() not in framing
                        ],
                        content=bytes(body_bytes),
                        request=response.request,
                    )
                head = _read_prefix(response, _ERROR_BODY_BYTES + 1)
        except httpx.TimeoutException as e:
            raise RetryableError(f"{method} {path}: timed out ({type(e).__name__})") from None
        except httpx.RequestError as e:  # transport, protocol and content-decoding failures
            detail = self._scrub(_clip(str(e), _SNIPPET_CHARS))
            raise RetryableError(f"{method} {path}: {type(e).__name__}: {detail}") from None
        status = response.status_code
        body: Any = None
        if len(head) <= _ERROR_BODY_BYTES:
            try:
                body = json.loads(head)
            except (ValueError, RecursionError):
                body = None
        if "html" in _content_type(response).lower():
            fallback = f"{response.reason_phrase} (an HTML page)".strip()
        else:
            snippet = head[: _SNIPPET_CHARS * 4].decode("utf-8", "replace")
            fallback = _clip(snippet, _SNIPPET_CHARS) or response.reason_phrase
        code, message = error_message(body, fallback)
        code = self._scrub(code) if code else None
        text = self._scrub(f"{method} {path}: HTTP {status}: {_clip(message, _SNIPPET_CHARS)}")
        if _says_task_not_found(body):
            # new-api answers a missing task with 400, others 404: the word decides, not
            # the status.
            raise PermanentError(text, code="task_not_found", status_code=status)
        if status in (408, 409, 425, 429) or status >= 500:
            raise RetryableError(
                text,
                delay_s=retry_after_s(response.headers),
                code="rate_limited" if status == 429 else "provider_unavailable",
                status_code=status,
            )
        raise PermanentError(text, code=code or f"http_{status}", status_code=status)

    # --- create ---

    def create_payload(self, request: VideoRequest, api_format: ApiFormat) -> dict[str, Any]:
        """The provider's request body for this job in this format."""
        body: dict[str, Any] = {"model": request.model}
        if request.prompt is not None:
            body["prompt"] = request.prompt
        if request.storyboard is not None:
            body["storyboard"] = [s.model_dump() for s in request.storyboard]
        # The OpenAI format speaks size, the unified one aspect ratio; each gets one of them.
        size, ratio = request.size, request.aspect_ratio
        if api_format is ApiFormat.OPENAI and ratio is not None:
            w, h = ASPECT_RATIOS[ratio]
            body["size"] = size or f"{w}x{h}"
        elif ratio is not None:
            body["aspect_ratio"] = ratio
        elif size is not None:
            body["size"] = size
        for field in ("duration", "image_url"):
            if (value := getattr(request, field)) is not None:
                body[field] = value
        if request.characters:
            body["characters"] = list(request.characters)
        body.update(request.extra)
        return body

    def create(
        self, request: VideoRequest, api_format: ApiFormat, idempotency_key: str
    ) -> ProviderTask:
        """Submit a generation; the Idempotency-Key makes a repeated call return the same task."""
        path = "/v1/videos" if api_format is ApiFormat.OPENAI else "/v1/video/create"
        response = self._call(
            "POST",
            path,
            json=self.create_payload(request, api_format),
            headers={"Idempotency-Key": idempotency_key},
        )
        task = self.parse_task(response)
        if not task.id:
            raise PermanentError(f"POST {path}: the answer has no task id", code="bad_response")
        return task

    # --- status ---

    def get(self, task_id: str, api_format: ApiFormat) -> ProviderTask:
        """The task's current state."""
        if api_format is ApiFormat.UNIFIED:
            response = self._call("GET", "/v1/video/query", params={"id": task_id})
        else:
            response = self._call("GET", f"/v1/videos/{task_id}")
        task = self.parse_task(response, task_id)
        if task.state is TaskState.DONE and not task.video_url:
            # OpenAI's own API gives no URL: the bytes come from the content route.
            task.video_url = f"{self.base_url}/v1/videos/{task.id}/content"
        return task

    def parse_task(self, response: httpx.Response, task_id: str = "") -> ProviderTask:
        """A status answer in any of the known shapes, as a ProviderTask.

        Raises only RetryableError (code "bad_response": not JSON, not an object) and
        PermanentError (code "task_not_found"). Fields that do not parse are None; a status
        that is missing or not a string is UNKNOWN.
        """
        route = _route(response)
        try:
            return self._parse_task(response, task_id, route)
        except (RetryableError, PermanentError):
            raise
        except Exception as e:
            # A shape no rule above foresaw is a bug here, not the job's: log it, and let
            # the job retry until its deadline rather than die with the worker's exception.
            log.error("unreadable provider answer", route=route, exc_info=True)
            raise RetryableError(
                f"{route}: the answer could not be read ({type(e).__name__})", code="bad_response"
            ) from None

    def _parse_task(self, response: httpx.Response, task_id: str, route: str) -> ProviderTask:
        try:
            body = response.json()
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise RetryableError(
                f"{route}: the answer is not JSON (content type {_content_type(response)!r})",
                code="bad_response",
                status_code=response.status_code,
            ) from None
        if not isinstance(body, dict):
            raise RetryableError(
                f"{route}: the answer is {_json_kind(body)}, not a JSON object",
                code="bad_response",
                status_code=response.status_code,
            )
        if _says_task_not_found(body):
            raise PermanentError(
                f"{route}: the provider has no task {task_id!r}"
                if task_id
                else f"{route}: the provider has no such task",
                code="task_not_found",
                status_code=response.status_code,
            )
        if isinstance(body.get("data"), dict) and "status" not in body:
            body = body["data"]  # some routers wrap the task in {"code":..., "data": {...}}
        state, raw_status = _status(body)
        video = body.get("video")
        meta = video if isinstance(video, dict) else {}
        code, message = error_message(body, "")
        return ProviderTask(
            id=_task_id(body.get("id")) or _task_id(body.get("task_id")) or task_id,
            state=state,
            raw_status=raw_status,
            progress=_progress(body.get("progress")),
            video_url=_file_url(video)
            or _file_url(body.get("video_url"))
            or _file_url(body.get("url")),
            width=_dimension(meta.get("width")),
            height=_dimension(meta.get("height")),
            duration_s=_duration_s(meta.get("duration")),
            error_code=self._scrub(code) if code else None,
            error_message=self._scrub(message) or None,
            poll_after_s=_poll_after_s(response.headers),
        )

    def cancel(self, task_id: str) -> bool:
        """Ask the provider to drop a task (DELETE /v1/videos/{id}); False where it can't."""
        try:
            self._call("DELETE", f"/v1/videos/{task_id}")
        except (PermanentError, RetryableError):
            return False
        return True

    # --- files ---

    def download_headers(self, url: str) -> dict[str, str]:
        """Headers for fetching a video URL: the API key only if the URL is the API's own."""
        return self._auth() if same_origin(url, self.base_url) else {}


def _poll_after_s(headers: httpx.Headers) -> float | None:
    """OpenAI's poll hint, else the retry hints; finite and non-negative, or None."""
    if (hint := _wait_s(headers.get("openai-poll-after-ms"), 1000)) is not None:
        return hint
    return retry_after_s(headers)


def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    """Up to limit bytes of a streamed body, leaving the rest unread."""
    head = bytearray()
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    return bytes(head[:limit])
