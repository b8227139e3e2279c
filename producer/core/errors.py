"""Every exception videoqueue raises, in one hierarchy.

VideoqueueError
├── InvalidRequest        a request (or batch item) failed validation; nothing was written
├── InvalidConfiguration  a configuration file (VIDEOQUEUE_PROVIDERS_FILE) failed validation
├── BudgetExceeded        a request would take its tenant past its budget; nothing was written
├── JobNotFound           no job record under that id
├── KeyNotFound           no API key of ours under that id
├── Unauthenticated       no API key, or one unknown, revoked or malformed
├── WaitTimeout           wait() gave up before the job ended
├── NotEnoughReplicas     Redis refused a write: its primary has too few replicas (NOREPLICAS)
├── OperationRefused      an operator's command cannot do what it was asked (retry, replay)
├── WebhookVerificationError   a webhook's signature or timestamp did not verify
├── ApiError              an HTTP request answered with OpenAI's error object (gateway, sandbox)
├── InvalidVideo          the provider's file is not a readable MP4 (raised in the worker)
├── BlockedUrl            a URL leads to an address the outbound policy refuses (worker)
├── FileNotFetched        the provider's finished video could not be fetched, for now (worker)
│   ├── FileUnreachable   no answer, a timeout, a 5xx or a 429: waited out until the deadline
│   └── FileRefused       another 4xx (an expired or missing file): asked for a fresh URL
├── BoundExceeded         a download broke a bound (worker)
│   ├── TooLarge          bigger than VIDEOQUEUE_MAX_VIDEO_BYTES
│   └── DownloadTimeout   slower than VIDEOQUEUE_DOWNLOAD_DEADLINE_S
└── ProviderError         the provider answered with an error (raised in the worker)
    ├── RetryableError    try again later: 429, 5xx, timeouts (carries delay_s)
    └── PermanentError    the provider refused for good: other 4xx, a failed task
"""

from __future__ import annotations

from typing import Any

import redis


class VideoqueueError(Exception):
    """Raised for anything videoqueue itself reports."""


class InvalidRequest(VideoqueueError, ValueError):
    """Raised when a request fails validation; `errors` lists each problem with its field."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    @classmethod
    def of_field(cls, field: str, message: str) -> InvalidRequest:
        """One problem with one field: "field: message"."""
        return cls(f"{field}: {message}", [{"field": field, "message": message}])


class InvalidConfiguration(VideoqueueError, ValueError):
    """Raised when a configuration file cannot be read or fails validation; the message names
    the file and the field."""


class BudgetExceeded(VideoqueueError):
    """Raised when a request (or a batch, as a whole) would take its tenant past its budget:
    spent in the budget's period + reserved + its estimate > budget_usd. Nothing was written.
    The facts are attributes, and the message says them all."""

    def __init__(
        self,
        *,
        tenant: str,
        budget_usd: float,
        period: str,
        spent_usd: float,
        reserved_usd: float,
        requested_usd: float,
    ) -> None:
        self.tenant = tenant
        self.budget_usd = budget_usd
        self.period = period
        self.spent_usd = spent_usd
        self.reserved_usd = reserved_usd
        self.requested_usd = requested_usd
        per = {"day": " per UTC day", "month": " per UTC month"}.get(period, " in total")
        super().__init__(
            f"tenant {tenant!r} has a budget of {budget_usd:.6g} USD{per}: spent "
            f"{spent_usd:.6g}, reserved {reserved_usd:.6g}, and this request needs "
            f"{requested_usd:.6g} more"
        )

    def facts(self) -> dict[str, Any]:
        """The facts as JSON-ready data (the HTTP 402's `budget` object)."""
        return {"tenant": self.tenant, "budget_usd": self.budget_usd, "period": self.period,
                "spent_usd": self.spent_usd, "reserved_usd": self.reserved_usd,
                "requested_usd": self.requested_usd}  # fmt: skip


class JobNotFound(VideoqueueError, KeyError):
    """Raised when no job record exists under the given id."""

    def __str__(self) -> str:
        return f"no job with id {self.args[0]!r}"


class KeyNotFound(VideoqueueError, KeyError):
    """Raised when no API key of ours (producer/core/keys.py) has the given id."""

    def __str__(self) -> str:
        return f"no API key with id {self.args[0]!r}"


class Unauthenticated(VideoqueueError):
    """Raised when a caller's API key is missing, unknown, revoked or malformed: one error for
    all four, whose message never repeats the key."""


class WaitTimeout(VideoqueueError, TimeoutError):
    """Raised when wait() reaches its timeout before the job ends."""


class NotEnoughReplicas(VideoqueueError, redis.ResponseError):
    """Raised when Redis refuses a write because its primary has fewer replicas in sync than
    its `min-replicas-to-write` (a NOREPLICAS answer): the refused command, script or
    transaction wrote nothing, and the same call may succeed once a replica is back.

    A redis-py ResponseError too (redis-py raises only those for an answer of Redis), made in
    place of the bare one by every client of ours (producer/core/redis_client.py)."""

    def __init__(self, *_: Any, status_code: str | None = "NOREPLICAS") -> None:
        # Redis's own text may add the script's SHA and line: this one says what to do.
        super().__init__(
            "Redis refused the write (NOREPLICAS): its primary has fewer replicas in sync than "
            "its min-replicas-to-write; nothing was written, try again once a replica is back",
            status_code=status_code,
        )


class OperationRefused(VideoqueueError):
    """Raised when an operator's command cannot act as asked (a job that has not failed is
    retried, a dead letter that is not there is replayed); the message says why and what to do."""


class WebhookVerificationError(VideoqueueError):
    """Raised when a received webhook's signature or timestamp does not verify."""


class ApiError(VideoqueueError):
    """Raised when an HTTP request (to the gateway, producer/http/, or the sandbox) is answered
    with an error object instead of a result: OpenAI's shape, which the router copies,
    `{"error": {"message", "type", "code", "param"}}` with `param` naming the field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """The answer's JSON body."""
        error = {"message": self.message, "type": self.type, "code": self.code,
                 "param": self.param}  # fmt: skip
        return {"error": error, **self.extra}

    def response(self) -> Any:
        """This error as a Starlette response (JSON)."""
        # Imported here: the core is imported by producers that never serve HTTP.
        import json

        from starlette.responses import Response

        # ASCII-escaped: a message may quote the caller's text, which may hold a lone
        # surrogate that UTF-8 cannot encode.
        return Response(
            json.dumps(self.body()), status_code=self.status, headers=self.headers,
            media_type="application/json",
        )  # fmt: skip


class InvalidVideo(VideoqueueError):
    """Raised when a file is not a readable MP4: not one at all, cut short, or with a missing or
    broken `moov` box. Reading the same bytes again cannot help; `code` is "invalid_video"."""

    code = "invalid_video"


class BlockedUrl(VideoqueueError):
    """Raised when a worker is asked to connect to an address the outbound URL policy refuses
    (producer/core/urls.py); the message names the host, never the whole (maybe signed) URL."""

    code = "blocked_url"


class FileNotFetched(VideoqueueError):
    """Raised when the provider says a video is done and its file did not come: trying again
    may help (worker/tasks.py's finalize says how often); given up, the job fails with `code`,
    "output_unreachable": the video was generated, and paid for, but could not be fetched."""

    code = "output_unreachable"


class FileUnreachable(FileNotFetched):
    """Raised when the provider's file host (or the provider, asked for a fresh file URL) did
    not answer: no connection, a reset, a timeout, a 5xx, a 408, 425 or 429."""


class FileRefused(FileNotFetched):
    """Raised when the file host refused the file URL with another 4xx (a signature expired, a
    file deleted or not yet on the CDN), or the provider gave no URL when asked for one."""


class BoundExceeded(VideoqueueError):
    """Raised when a download breaks one of the worker's bounds; `code` names the bound, and
    trying again would only spend the same time and bytes again."""

    code = "bound_exceeded"


class TooLarge(BoundExceeded):
    """Raised when a video is bigger than VIDEOQUEUE_MAX_VIDEO_BYTES."""

    code = "too_large"


class DownloadTimeout(BoundExceeded):
    """Raised when a download attempt outlives VIDEOQUEUE_DOWNLOAD_DEADLINE_S."""

    code = "download_timeout"


class ProviderError(VideoqueueError):
    """Raised when the video provider answers with an error."""

    def __init__(
        self, message: str, *, code: str = "provider_error", status_code: int | None = None
    ):
        super().__init__(message)
        self.code = code
        self.status_code = status_code


class RetryableError(ProviderError):
    """Raised when the call may succeed later (429, 5xx, timeout); `delay_s` is the hint, if any."""

    def __init__(
        self,
        message: str,
        *,
        delay_s: float | None = None,
        code: str = "provider_unavailable",
        status_code: int | None = None,
        not_taken: bool = False,
    ):
        super().__init__(message, code=code, status_code=status_code)
        self.delay_s = delay_s
        # The call certainly did not take effect (nothing reached the provider, or it refused
        # before doing anything): another provider may be asked without billing twice.
        self.not_taken = not_taken


class PermanentError(ProviderError):
    """Raised when retrying cannot help: a 4xx other than 429, or a task the provider failed."""


# The codes a failed job's error carries that videoqueue chooses itself (README, "The job
# record"); any other is the provider's own, for a refused request or a failed generation.
# Metrics label failures by these only (worker/metrics.py): a provider's codes are unbounded.
ERROR_CODES = frozenset({
    "timeout", "rate_limited", "provider_unavailable", "provider_error", "bad_response",
    "task_not_found", "unsupported_request", "unknown_provider", "no_provider",
    "download_failed", "download_timeout", "too_large", "bound_exceeded", "blocked_url",
    "not_mp4", "invalid_video", "storage_unavailable", "internal_error", "uncertain_create",
    "input_reference_missing", "invalid_input_reference", "output_unreachable",
})  # fmt: skip
