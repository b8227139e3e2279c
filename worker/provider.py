"""The video provider's API: both request formats, every status vocabulary, errors sorted
into "try again later" and "give up".

The API key is sent only to the API's own origin. It never appears in a log line, an
exception or a record: errors carry the provider's message and the HTTP status, nothing
from our request headers.
"""

from __future__ import annotations

import email.utils
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


def retry_after_s(headers: httpx.Headers) -> float | None:
    """The server's wait hint: retry-after-ms, then Retry-After (seconds or an HTTP date)."""
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def error_message(body: Any, fallback: str) -> tuple[str | None, str]:
    """(code, message) from whichever field a provider uses for why it failed."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return err.get("code") or err.get("type"), str(err.get("message") or fallback)
        if isinstance(err, str) and err:
            return None, err
        for field in ("fail_reason", "failure_reason", "message", "detail"):
            if body.get(field):
                return body.get("code"), str(body[field])
    return None, fallback


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def same_origin(a: str, b: str) -> bool:
    return _origin(a) == _origin(b)


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

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; raises RetryableError or PermanentError on anything but 2xx."""
        headers = {**self._auth(), **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, self.base_url + path, headers=headers, **kwargs)
        except httpx.TimeoutException as e:
            raise RetryableError(f"{method} {path}: timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise RetryableError(f"{method} {path}: {type(e).__name__}: {e}") from None
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        code, message = error_message(body, response.text[:300] or response.reason_phrase)
        status = response.status_code
        text = f"{method} {path}: HTTP {status}: {message}"
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
        """A status answer in any of the known shapes, as a ProviderTask."""
        try:
            body = response.json()
        except ValueError:
            raise RetryableError(
                f"{response.request.url.path}: answer is not JSON", code="bad_response"
            ) from None
        if not isinstance(body, dict):
            raise RetryableError("status answer is not a JSON object", code="bad_response")
        if isinstance(body.get("data"), dict) and "status" not in body:
            body = body["data"]  # some routers wrap the task in {"code":..., "data": {...}}
        if body.get("code") == "task_not_exist":
            raise PermanentError(f"task {task_id} does not exist", code="task_not_found")
        raw = body.get("status") or body.get("state")
        video = body.get("video") if isinstance(body.get("video"), dict) else {}
        code, message = error_message(body, "")
        progress = body.get("progress")
        return ProviderTask(
            id=str(body.get("id") or body.get("task_id") or task_id),
            state=map_status(raw),
            raw_status=str(raw) if raw is not None else None,
            progress=int(progress) if isinstance(progress, int | float) else None,
            video_url=video.get("url") or body.get("video_url") or body.get("url"),
            width=video.get("width"),
            height=video.get("height"),
            duration_s=video.get("duration"),
            error_code=code,
            error_message=message or None,
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
    if value := headers.get("openai-poll-after-ms"):
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            return None
    return retry_after_s(headers)
