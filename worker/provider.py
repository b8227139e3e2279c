"""The video API's client: speaks the configured dialect (worker/dialect.py) over HTTP, and
sorts errors into "try again later" and "give up".

The API key is sent only to the API's own origin (on downloads too, through every redirect:
`credentials()`). It never appears in a log line, an exception or a record: errors carry
the provider's message and the HTTP status, nothing from our request headers. Answers are
read by worker/answers.py: nothing but a ProviderTask, a RetryableError or a PermanentError
comes out, so no answer can strand a job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import httpx
import structlog
from pydantic import SecretStr

from producer.core.deadline import deadline_transport, within
from producer.core.errors import PermanentError, RetryableError
from producer.core.providers import Provider, api_key, providers
from producer.core.requests import ASPECT_RATIOS, StoredImage, VideoRequest
from producer.core.settings import ApiFormat, Settings
from worker import metrics
from worker.answers import (
    ERROR_BODY_BYTES,
    SNIPPET_CHARS,
    ProviderTask,
    at,
    clip,
    content_type,
    error_message,
    first_file_url,
    http_url,
    read_prefix,
    read_task,
    retry_after_s,
    route_of,
    same_origin,
    says_task_not_found,
    task_id_of,
    unwrapped_body,
)
from worker.dialect import Auth, Create, Dialect, Result, Route, TaskState, load_dialect
from worker.egress import Credentials, origin_of

log = structlog.get_logger(__name__)

__all__ = [
    "FilePart",
    "Operation",
    "ProviderClient",
    "ProviderTask",
    "StoredImages",
    "TaskState",
    "client_for",
    "kling_jwt",
]


# What an API call is for (the label metrics count calls by).
Operation = Literal["create", "status", "download", "cancel"]


class ProviderClient:
    """Talks to one provider's video API in its dialect (worker/dialect.py).

    Args:
        provider: the provider (producer/core/providers.py): its name (what metrics count
            it under), base URL and create format.
        dialect: the dialect it speaks, loaded.
        key: its API key.
        http: the httpx.Client to send with (one per worker process).
        timeout_s: the most one whole exchange with the API may take (api_timeout_s).
    """

    def __init__(
        self,
        provider: Provider,
        dialect: Dialect,
        key: SecretStr,
        http: httpx.Client,
        *,
        timeout_s: float,
    ) -> None:
        self.name = provider.name
        self.api_format = provider.api_format
        self.dialect = dialect
        self.base_url = provider.base_url.rstrip("/")
        self.http = http
        self.timeout_s = timeout_s
        self._key = key

    def credentials(self) -> Credentials:
        """The dialect's key, as headers or query parameters, bound to the API's origin: on a
        download (worker/storage.py) the transport sends them to that origin only, however
        the file URL redirects (worker/egress.py)."""
        key = self._key.get_secret_value()
        scheme = self.dialect.auth
        origin = origin_of(httpx.URL(self.base_url))
        if scheme is Auth.KEY_PARAM:
            return Credentials(origin, params={"key": key})
        if scheme is Auth.KEY:
            return Credentials(origin, {"Authorization": f"Key {key}"})
        if scheme is Auth.GOOG:
            return Credentials(origin, {"x-goog-api-key": key})
        if scheme is Auth.KLING_JWT:
            return Credentials(origin, {"Authorization": f"Bearer {kling_jwt(key)}"})
        return Credentials(origin, {"Authorization": f"Bearer {key}"})

    def _scrub(self, text: str, secrets: tuple[str, ...] = ()) -> str:
        """text without the API key (or either half of a Kling key pair), or any of secrets,
        should a provider echo it back."""
        key = self._key.get_secret_value()
        # The whole key always; a half only when long enough not to match by chance.
        halves = [half for half in key.split(":") if len(half) >= 8 and half != key]
        for secret in (key, *halves, *secrets):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _call(
        self,
        method: str,
        path: str,
        *,
        operation: Operation,
        secrets: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call; raises RetryableError or PermanentError on anything but 2xx.

        The one place every call to the API passes (metrics attach here). The whole exchange,
        from the connect to the last byte of any answer (its head too, any status), takes at
        most api_timeout_s (producer/core/deadline.py): one slow answer must not hold the other
        status queries of a poll batch, nor the worker. A success is read up to 1 MiB (a
        bigger one, an endless one, is a retryable "bad_response": no status answer is that
        big, and reading on would exhaust the worker's memory); of an error body only the
        first 64 KiB are read.

        Args:
            method: the HTTP method.
            path: the path under the API's base URL.
            operation: what the call is for: create, status, download or cancel.
            secrets: texts of the request kept out of errors, as the key is.
            **kwargs: passed to httpx (json, params, headers, ...).
        """
        success_cap_bytes = 1 << 20
        # Every call goes to the API's origin and follows no redirect: the key goes as is.
        credentials = self.credentials()
        headers = {**self.dialect.headers, **credentials.headers, **kwargs.pop("headers", {})}
        if credentials.params:
            kwargs["params"] = {**kwargs.get("params", {}), **credentials.params}
        response = None
        try:
            with (
                within(self.timeout_s) as deadline,
                self.http.stream(
                    method, self.base_url + path, headers=headers, **kwargs
                ) as response,
            ):
                metrics.provider_request(self.name, operation, response)
                if response.is_success:
                    body_bytes = bytearray()
                    for chunk in response.iter_bytes():
                        body_bytes += chunk
                        if len(body_bytes) > success_cap_bytes:
                            raise RetryableError(
                                f"{method} {path}: the answer is over {success_cap_bytes} bytes",
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
                head = read_prefix(response, ERROR_BODY_BYTES + 1)
        except httpx.TimeoutException as e:
            # Only a connect that timed out sent nothing; a read timeout may follow a create
            # the provider took.
            total = f", over {deadline.timeout_s:g} s in all" if deadline.passed else ""
            raise RetryableError(
                f"{method} {path}: timed out ({type(e).__name__}{total})",
                not_taken=isinstance(e, httpx.ConnectTimeout),
            ) from None
        except httpx.RequestError as e:  # transport, protocol and content-decoding failures
            detail = self._scrub(clip(str(e), SNIPPET_CHARS), secrets)
            # Refused, unresolvable, unreachable: nothing was sent. A connection dropped after
            # the request went out (ReadError, RemoteProtocolError) may have been taken.
            raise RetryableError(
                f"{method} {path}: {type(e).__name__}: {detail}",
                not_taken=isinstance(e, httpx.ConnectError),
            ) from None
        finally:
            if response is None:  # no answer came
                metrics.provider_request(self.name, operation, None)
        status = response.status_code
        body: Any = None
        if len(head) <= ERROR_BODY_BYTES:
            try:
                body = json.loads(head)
            except (ValueError, RecursionError):
                body = None
        if "html" in content_type(response).lower():
            fallback = f"{response.reason_phrase} (an HTML page)".strip()
        else:
            snippet = head[: SNIPPET_CHARS * 4].decode("utf-8", "replace")
            fallback = clip(snippet, SNIPPET_CHARS) or response.reason_phrase
        code, message = error_message(body, fallback)
        code = self._scrub(code, secrets) if code else None
        text = self._scrub(f"{method} {path}: HTTP {status}: {clip(message, SNIPPET_CHARS)}",
                           secrets)  # fmt: skip
        if says_task_not_found(body):
            # new-api answers a missing task with 400, others 404: the word decides, not
            # the status.
            raise PermanentError(text, code="task_not_found", status_code=status)
        if status in (408, 409, 425, 429) or status >= 500:
            raise RetryableError(
                text,
                delay_s=retry_after_s(response.headers),
                code="rate_limited" if status == 429 else "provider_unavailable",
                status_code=status,
                not_taken=status == 429,  # refused before doing anything
            )
        raise PermanentError(text, code=code or f"http_{status}", status_code=status)

    # --- create ---

    def create_payload(
        self,
        request: VideoRequest,
        api_format: ApiFormat,
        job_id: str | None = None,
        images: StoredImages | None = None,
    ) -> dict[str, Any]:
        """The provider's request body for this job in this format.

        Args:
            images: reads (or presigns) a stored reference image, for a request that has one.

        Raises:
            PermanentError: code "unsupported_request", naming a field the request sets
                that the dialect has no place for.
        """
        fmt = self.dialect.format_for(api_format.value)
        values = _request_values(request, fmt)
        sources = {source for field in fmt.body.values() for source in field.sources}
        if "{model}" in fmt.path:  # Replicate and Veo name the model in the route
            sources.add("model")
        if missing := sorted(k for k, v in values.items() if v is not None and k not in sources):
            names = ", ".join("image_object (an input_reference file)" if k == "image_object"
                              else k for k in missing)  # fmt: skip
            raise PermanentError(
                f"the {self.dialect.name} dialect has no place for {names}",
                code="unsupported_request",
            )
        values["job_id"] = job_id
        body: dict[str, Any] = {}
        for target, field in fmt.body.items():
            value = field.value
            if field.source is not None:
                value = next((values[k] for k in field.sources if values[k] is not None), None)
            if value is None:
                continue
            if isinstance(value, StoredImage):
                value = _image_value(value, field.type, images)
            elif field.separator is not None and isinstance(value, str):
                value = value.replace("x", field.separator)
            if field.type == "string" or field.suffix:
                value = f"{value}{field.suffix}"
            elif field.type == "int":
                value = int(value)
            _put(body, target, value)
        body.update(request.extra)
        return body

    def create(
        self,
        request: VideoRequest,
        api_format: ApiFormat,
        idempotency_key: str,
        images: StoredImages | None = None,
        callback_url: str | None = None,
    ) -> ProviderTask:
        """Submit a generation; the Idempotency-Key makes a repeated call return the same task
        (where the dialect has one). A stored reference image is read (or presigned) through
        images. With callback_url (only where the dialect has a [callback] table), the create
        carries it where the dialect says."""
        fmt = self.dialect.format_for(api_format.value)
        if any(part in ("", ".", "..") for part in request.model.split("/")):
            raise PermanentError(
                f"model {request.model!r} cannot be part of a route", code="unsupported_request"
            )
        # Replicate's models are "owner/name" and go into the path as two segments.
        path = fmt.path.replace("{model}", quote(request.model, safe="/"))
        body = self.create_payload(request, api_format, idempotency_key, images)
        headers = dict(fmt.headers)
        if fmt.idempotency_header:
            headers[fmt.idempotency_header] = idempotency_key
        params: dict[str, str] = {}
        spec = self.dialect.callback
        if callback_url is not None and spec is not None:
            if spec.url_in == "query":
                params[spec.url_field] = callback_url  # fal: ?fal_webhook=
            else:
                _put(body, spec.url_field, callback_url)
                body.update(spec.send)
        sent: dict[str, Any] = {"json": body}
        if params:
            sent["params"] = params
        if fmt.encoding == "multipart":
            # (None, value) parts are plain form fields; a list makes httpx send multipart.
            sent = {"files": [(k, _form_part(v)) for k, v in body.items()], **(
                {"params": params} if params else {})}  # fmt: skip
        # A presigned URL of the image is a credential until it expires, and so is the
        # callback URL's token: kept out of errors, should the provider echo our request.
        secrets = (*_presigned(body), *((callback_url,) if callback_url else ()))
        response = self._call(fmt.method, path, headers=headers, operation="create",
                              secrets=secrets, **sent)  # fmt: skip
        task = self.parse_task(response)
        if not task.id:
            # Kling and MiniMax refuse a create with HTTP 200 and a code in the body.
            reason = f": {task.error_message}" if task.error_message else ""
            if task.error_code in self.dialect.answer.retry_codes:
                raise RetryableError(
                    f"POST {path}: refused for now{reason}", code="rate_limited", not_taken=True
                )
            if task.error_code is None and task.error_message is None:
                # A success that says neither "refused" nor which task: it may have made one.
                raise RetryableError(f"POST {path}: the answer has no task id", code="bad_response")
            raise PermanentError(
                f"POST {path}: the answer has no task id{reason}",
                code=task.error_code or "bad_response",
            )
        return task

    def find(self, key: str) -> ProviderTask | None:
        """The task a create sent with this key made, asked of the dialect's lookup route;
        None when the provider has none (404, or its "no such task").

        Raises:
            RetryableError: the provider could not answer now.
            PermanentError: the lookup was refused for another reason.
        """
        route = self.dialect.lookup
        assert route is not None  # asked only of dialects that have one
        path = route.path.replace("{key}", quote(key, safe=""))
        try:
            response = self._call(route.method, path, operation="status")
        except PermanentError as e:
            if e.code == "task_not_found" or e.status_code == 404:
                return None
            raise
        task = self.parse_task(response)
        return task if task.id else None

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
        if task.state is not TaskState.DONE or task.video_url:
            return task
        if self.dialect.result is not None:
            task.video_url = self._result_url(self.dialect.result, task, response)
        elif self.dialect.content is not None:
            # OpenAI's own API gives no URL: the bytes come from the content route.
            task.video_url = self.base_url + self._path(self.dialect.content, task.id)
        if not task.video_url and self.dialect.answer.done_requires_file:
            task.state = TaskState.FAILED
            task.error_code = task.error_code or "no_output"
            task.error_message = task.error_message or "the provider finished without a video"
        return task

    def _result_url(self, result: Result, task: ProviderTask, answer: httpx.Response) -> str | None:
        """The file URL from the dialect's extra call (MiniMax's file retrieval, fal's
        response_url); None when that answer has none."""
        body = unwrapped_body(answer, self.dialect)
        if result.url_from is not None:
            url = http_url(at(body, result.url_from))
            # Only the API's own origin is asked with the key.
            if url is None or not same_origin(url, self.base_url):
                raise RetryableError(
                    f"the answer's {result.url_from} is not a URL of the API", code="bad_response"
                )
            path = url[len(_origin_prefix(url)) :]
        else:
            assert result.path is not None  # the model allows one or the other
            path = self._path(result.path, task.id)
            for name, where in result.params.items():
                value = task_id_of(at(body, where))
                if value is None:
                    raise RetryableError(f"the answer has no {where}", code="bad_response")
                path = path.replace(f"{{{name}}}", quote(value, safe=""))
        response = self._call(result.method, path, operation="status")
        return first_file_url(response, result.file_url)

    def _path(self, route: Route | str, task_id: str) -> str:
        # The id comes from the provider's answer: quoted, so it cannot leave its segment.
        template = route if isinstance(route, str) else route.path
        safe = self.dialect.id_path_safe
        if safe and any(part in ("", ".", "..") for part in task_id.split(safe)):
            raise PermanentError(f"task id {task_id!r} cannot be a route", code="bad_response")
        return template.replace("{id}", quote(task_id, safe=safe))

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
        route = route_of(response)
        try:
            task = read_task(response, self.dialect, task_id, route)
        except (RetryableError, PermanentError):
            raise
        except Exception as e:
            # A shape no rule above foresaw is a bug here, not the job's: log it, and let
            # the job retry until its deadline rather than die with the worker's exception.
            log.error("unreadable provider answer", route=route, exc_info=True)
            raise RetryableError(
                f"{route}: the answer could not be read ({type(e).__name__})", code="bad_response"
            ) from None
        task.error_code = self._scrub(task.error_code) if task.error_code else None
        task.error_message = self._scrub(task.error_message) if task.error_message else None
        return task

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


def client_for(
    settings: Settings, provider: Provider | None = None, http: httpx.Client | None = None
) -> ProviderClient:
    """A client for one of the deployment's providers (the first if not given), with what it
    needs of the settings: its key, its dialect (a user's file first), the API timeout. With
    no http, a client of its own, bounded by the same timeouts.

    Raises:
        DialectError: the provider's dialect is unknown or invalid.
    """
    provider = provider or providers(settings)[0]
    user_dir = str(settings.dialects_dir) if settings.dialects_dir else None
    http = http or httpx.Client(
        timeout=httpx.Timeout(settings.api_timeout_s, connect=settings.api_connect_timeout_s),
        follow_redirects=False,
        transport=deadline_transport(),
    )
    return ProviderClient(
        provider,
        load_dialect(provider.dialect, user_dir),
        api_key(provider, settings),
        http,
        timeout_s=settings.api_timeout_s,
    )


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
        "image_object": request.image_object,
        "characters": list(request.characters) or None,
    }


def _put(body: dict[str, Any], path: str, value: Any) -> None:
    """Set body's field at a dotted path ("input.prompt", "content[0].text"), making the
    objects and lists on the way."""
    steps: list[str | int] = [
        int(step.strip("[]")) if step.startswith("[") else step
        for step in path.replace("[", ".[").split(".")
        if step
    ]
    place: Any = body
    for step, after in zip(steps, steps[1:], strict=False):
        empty: Any = [] if isinstance(after, int) else {}
        if isinstance(step, int):
            while len(place) <= step:
                place.append(None)
            if place[step] is None:
                place[step] = empty
        else:
            place.setdefault(step, empty)
        place = place[step]
    last = steps[-1]
    if isinstance(last, int):
        while len(place) <= last:
            place.append(None)
    place[last] = value


def _origin_prefix(url: str) -> str:
    """ "scheme://host[:port]" of a URL: what precedes its path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _form_part(value: Any) -> tuple[str | None, str | bytes, str | None] | tuple[None, str]:
    if isinstance(value, FilePart):
        return value.filename, value.data, value.content_type
    return None, value if isinstance(value, str) else json.dumps(value)


def _image_value(image: StoredImage, kind: str, images: StoredImages | None) -> Any:
    """The stored image as a field of type kind takes it: a file part, or a presigned URL."""
    if images is None:
        raise PermanentError("no store to read the reference image from", code="internal_error")
    if kind == "file":
        return FilePart.of(image, images.read(image))
    return Presigned(images.url(image))


class Presigned(str):
    """A presigned URL in a create body (sent as the string it is; found again to keep it
    out of errors)."""

    __slots__ = ()


def _presigned(value: Any) -> list[str]:
    if isinstance(value, Presigned):
        return [str(value)]
    if isinstance(value, dict):
        return [url for item in value.values() for url in _presigned(item)]
    if isinstance(value, list):
        return [url for item in value for url in _presigned(item)]
    return []


class StoredImages(Protocol):
    """Where a request's stored reference image is read from (worker/inputs.py)."""

    def read(self, image: StoredImage) -> bytes:
        """The image's bytes (RetryableError when storage is down, PermanentError when the
        object is gone or not what the request says)."""
        ...

    def url(self, image: StoredImage) -> str:
        """A short-lived URL of the image, made now (never recorded)."""
        ...


@dataclass(frozen=True)
class FilePart:
    """A file part of a multipart create body."""

    filename: str
    data: bytes
    content_type: str

    @classmethod
    def of(cls, image: StoredImage, data: bytes) -> FilePart:
        extension = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
        return cls(f"input_reference.{extension[image.content_type]}", data, image.content_type)


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
