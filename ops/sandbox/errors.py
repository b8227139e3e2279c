"""The sandbox's error answers, in the provider's shape.

Hierarchy::

    ApiError                an answer with an HTTP status and {"error": {...}} (the gateway's
                            too: producer/core/errors.py)
    DeliberateTruncation    raised to cut a download short or reset it (a fault, not a bug)

Both flavors answer errors as ``{"error": {"message", "type", "code", "param"}}``: OpenAI's
shape, which the router copies.
"""

from __future__ import annotations

import logging

from producer.core.errors import ApiError


def invalid(message: str, *, code: str, param: str | None = None) -> ApiError:
    """A 400 that names the problem and the field."""
    return ApiError(400, message, code=code, param=param)


def not_found(message: str, *, code: str = "not_found") -> ApiError:
    """A 404 in the provider's shape."""
    return ApiError(404, message, code=code, type_="invalid_request_error")


class DeliberateTruncation(Exception):
    """Raised when a download is cut short or reset on purpose (truncate_rate, file_outage)."""


class _DropDeliberateTruncation(logging.Filter):
    # uvicorn logs any exception that escapes the app with a traceback; a deliberately cut
    # download is the only way ASGI has to close a connection mid-body, so it is not news.
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DeliberateTruncation)


_FILTER = _DropDeliberateTruncation()


def quiet_deliberate_truncations() -> None:
    """Keep uvicorn from logging deliberately truncated downloads as errors (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
