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

import base64
import email.utils
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import structlog

from producer.errors import PermanentError, RetryableError
from producer.requests import ASPECT_RATIOS, VideoRequest
from producer.settings import ApiFormat, Settings
from worker.dialect import Auth, Create, Dialect, Route, TaskState, load_dialect

log = structlog.get_logger(__name__)


# What an API call is for (the label metrics count calls by).
Operation = Literal["create", "status", "download", "cancel"]


def map_status(word: Any) -> TaskState:
    """The meaning of a status word in the router's (widest) vocabulary; UNKNOWN if unheard of."""
    return load_dialect("router").state_of(word)


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
            return code, _text(err.get("message")) or _clip(str(fallback))
        if isinstance(err, str) and err.strip():
            return None, _clip(err)
        for field, code_field in _REASON_FIELDS:
            if text := _text(at(body, field)):
                return _code(at(body, code_field)), text
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
        return dialect.state_of(raw), _clip(raw, _STATUS_CHARS)
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
    """Talks to the video API in its dialect (worker/dialect.py).

    Args:
        settings: API base URL, key, dialect, format and timeouts.
        http: an httpx.Client to use (one per worker process); made if not given.
        dialect: the dialect to speak; the one settings name if not given.
    """

    def __init__(
        self, settings: Settings, http: httpx.Client | None = None, dialect: Dialect | None = None
    ) -> None:
        self.settings = settings
        self.dialect = dialect or load_dialect(
            settings.api_dialect, str(settings.dialects_dir) if settings.dialects_dir else None
        )
        self.base_url = settings.api_base_url.rstrip("/")
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(settings.api_timeout_s, connect=settings.api_connect_timeout_s),
            follow_redirects=False,
        )

    def _auth(self) -> dict[str, str]:
        key = self.settings.api_key.get_secret_value()
        scheme = self.dialect.auth
        if scheme is Auth.KEY:
            return {"Authorization": f"Key {key}"}
        if scheme is Auth.GOOG:
            return {"x-goog-api-key": key}
        if scheme is Auth.KLING_JWT:
            return {"Authorization": f"Bearer {kling_jwt(key)}"}
        return {"Authorization": f"Bearer {key}"}

    def _scrub(self, text: str) -> str:
        """text without the API key (or either half of a Kling key pair), should a provider
        echo it back."""
        key = self.settings.api_key.get_secret_value()
        for secret in (key, *key.split(":")) if key else ():
            if len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text

    def _call(
        self, method: str, path: str, *, operation: Operation, **kwargs: Any
    ) -> httpx.Response:
        """One API call; raises RetryableError or PermanentError on anything but 2xx.

        The one place every call to the API passes (metrics attach here). A success is read
        whole; of an error body only the first 64 KiB are read.

        Args:
            method: the HTTP method.
            path: the path under the API's base URL.
            operation: what the call is for: create, status, download or cancel.
            **kwargs: passed to httpx (json, params, headers, ...).
        """
        headers = {**self._auth(), **kwargs.pop("headers", {})}
        try:
            with self.http.stream(
                method, self.base_url + path, headers=headers, **kwargs
            ) as response:
                if response.is_success:
                    response.read()
                    return response
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
        """The provider's request body for this job in this format.

        Raises:
            PermanentError: code "unsupported_request", naming a field the request sets
                that the dialect has no place for.
        """
        fmt = self.dialect.format_for(api_format.value)
        values = _request_values(request, fmt)
        sources = {field.source for field in fmt.body.values()}
        if missing := sorted(k for k, v in values.items() if v is not None and k not in sources):
            raise PermanentError(
                f"the {self.dialect.name} dialect has no place for {', '.join(missing)}",
                code="unsupported_request",
            )
        body: dict[str, Any] = {}
        for target, field in fmt.body.items():
            if (value := values.get(field.source)) is None:
                continue
            if field.type == "string" or field.suffix:
                value = f"{value}{field.suffix}"
            elif field.type == "int":
                value = int(value)
            _put(body, target, value)
        body.update(request.extra)
        return body

    def create(
        self, request: VideoRequest, api_format: ApiFormat, idempotency_key: str
    ) -> ProviderTask:
        """Submit a generation; the Idempotency-Key makes a repeated call return the same task
        (where the dialect has one)."""
        fmt = self.dialect.format_for(api_format.value)
        path = fmt.path.replace("{model}", quote(request.model, safe=""))
        body = self.create_payload(request, api_format)
        headers = dict(fmt.headers)
        if fmt.idempotency_header:
            headers[fmt.idempotency_header] = idempotency_key
        sent: dict[str, Any] = {"json": body}
        if fmt.encoding == "multipart":
            # (None, value) parts are plain form fields; a list makes httpx send multipart.
            sent = {"files": [(k, (None, _form_value(v))) for k, v in body.items()]}
        response = self._call(fmt.method, path, headers=headers, operation="create", **sent)
        task = self.parse_task(response)
        if not task.id:
            raise PermanentError(f"POST {path}: the answer has no task id", code="bad_response")
        return task

    # --- status ---

    def get(self, task_id: str, api_format: ApiFormat) -> ProviderTask:
        """The task's current state, from the dialect's query route.

        Where the format has a fallback query route (the router's undocumented unified
        query), it is asked when the documented route is not served: 404 or 405 that is not
        new-api's ``task_not_exist``.
        """
        query = self.dialect.query
        fallback = self.dialect.format_for(api_format.value).query_fallback
        try:
            response = self._call(query.method, self._path(query, task_id), operation="status")
        except PermanentError as e:
            if fallback is None or e.status_code not in (404, 405) or e.code == "task_not_found":
                raise
            response = self._query_fallback(fallback, task_id, e)
        task = self.parse_task(response, task_id)
        if task.state is TaskState.DONE and not task.video_url and self.dialect.content:
            # OpenAI's own API gives no URL: the bytes come from the content route.
            task.video_url = self.base_url + self._path(self.dialect.content, task.id)
        return task

    def _path(self, route: Route | str, task_id: str) -> str:
        # The id comes from the provider's answer: quoted, so it cannot leave its segment.
        template = route if isinstance(route, str) else route.path
        return template.replace("{id}", quote(task_id, safe=""))

    def _query_fallback(
        self, path: str, task_id: str, documented: PermanentError
    ) -> httpx.Response:
        """The fallback query; where it is not served either, the documented route's error
        stands."""
        try:
            return self._call("GET", self._path(path, task_id), operation="status")
        except PermanentError as e:
            if e.code != "task_not_found" and e.status_code in (404, 405):
                raise documented from None
            raise

    def parse_task(self, response: httpx.Response, task_id: str = "") -> ProviderTask:
        """A status answer in the dialect's shape, as a ProviderTask.

        Raises only RetryableError (code "bad_response": not JSON, not an object) and
        PermanentError (code "task_not_found"). Fields that do not parse are None; a status
        that is missing or not a string is UNKNOWN (or what the dialect says no status means).
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
        answer = self.dialect.answer
        body = _unwrapped(body, self.dialect)
        state, raw_status = _status(body, self.dialect)
        code, message = self._reason(body)
        progress = _first(body, answer.progress, _percent)
        return ProviderTask(
            id=_first(body, answer.id, _task_id) or task_id,
            state=state,
            raw_status=raw_status,
            progress=None if progress is None else _progress(progress * answer.progress_scale),
            video_url=_first(body, answer.file_url, _file_url),
            width=_first(body, answer.width, _dimension),
            height=_first(body, answer.height, _dimension),
            duration_s=_first(body, answer.duration, _duration_s),
            error_code=self._scrub(code) if code else None,
            error_message=self._scrub(message) or None,
            poll_after_s=_poll_after_s(response.headers),
        )

    def _reason(self, body: dict[str, Any]) -> tuple[str | None, str]:
        reasons = self.dialect.answer.reasons
        if reasons is None:
            return error_message(body, "")
        for reason in reasons:
            if text := _text(at(body, reason.message)):
                return (_code(at(body, reason.code)) if reason.code else None), text
        return None, ""

    def cancel(self, task_id: str) -> bool:
        """Ask the provider to drop a task (the dialect's cancel route); False where it can't."""
        route = self.dialect.cancel
        if route is None:
            return False
        try:
            self._call(route.method, self._path(route, task_id), operation="cancel")
        except (PermanentError, RetryableError):
            return False
        return True

    # --- files ---

    def download_headers(self, url: str) -> dict[str, str]:
        """Headers for fetching a video URL: the API key only if the URL is the API's own."""
        return self._auth() if same_origin(url, self.base_url) else {}


def _request_values(request: VideoRequest, fmt: Create) -> dict[str, Any]:
    """Our request's values by source name, size and aspect ratio as the format speaks them."""
    size, ratio = request.size, request.aspect_ratio
    if fmt.dimensions == "size" and ratio is not None:
        w, h = ASPECT_RATIOS[ratio]
        size, ratio = size or f"{w}x{h}", None
    elif fmt.dimensions == "aspect_ratio" or ratio is not None:
        size = None
    return {
        "model": request.model,
        "prompt": request.prompt,
        "storyboard": None
        if request.storyboard is None
        else [s.model_dump() for s in request.storyboard],
        "size": size,
        "aspect_ratio": ratio,
        "duration": request.duration,
        "image_url": request.image_url,
        "characters": list(request.characters) or None,
    }


def _put(body: dict[str, Any], path: str, value: Any) -> None:
    """Set body's field at a dotted path ("input.prompt"), making the objects on the way."""
    *parents, last = path.split(".")
    for name in parents:
        body = body.setdefault(name, {})
    body[last] = value


def _form_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def kling_jwt(key_pair: str, now_s: float | None = None) -> str:
    """Kling's bearer token: a JWT (HS256) from "ACCESS_KEY:SECRET_KEY", valid 30 minutes.

    Kling's documentation: iss = the access key, exp = now + 1800, nbf = now - 5.
    """
    access, _, secret = key_pair.partition(":")
    now = int(time.time() if now_s is None else now_s)

    def part(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"iss": access, "exp": now + 1800, "nbf": now - 5}
    signing = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
    mac = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


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
