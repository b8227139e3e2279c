"""Secrets and signed URLs kept out of every line a worker writes.

A file URL's query is its signature (`?exp=...&sig=...`), a webhook URL's may carry the
receiver's token, and URLs reach text in many ways: httpx logs every request's full URL at
INFO, and exception messages and provider answers may quote one. So every log line (ours
through structlog, httpx's and httpcore's through a logging filter) and every message that
goes into a record or a webhook passes through redact(): a URL keeps its scheme, host and path,
loses its user info, query and fragment, and each configured secret is blanked.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from producer.core.providers import api_key, providers
from producer.core.redis_client import url_secrets
from producer.core.settings import Settings

REDACTED = "[redacted]"
# A URL's user info (`//user:pass@`) and its query or fragment, up to whitespace or a quote.
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@'\"]*@")
_QUERY = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*)[?#][^\s'\"]*")

_secrets: list[str] = []


def configure(settings: Settings) -> None:
    """Remember this deployment's secrets (the API key, the webhook secret, S3's key, the
    Redis and Sentinel passwords)."""
    webhook_secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    values = [
        settings.api_key.get_secret_value(),
        # Every account's key of a providers file.
        *(api_key(p, settings).get_secret_value() for p in providers(settings)),
        webhook_secret,
        # The key itself too, the way Standard Webhooks libraries decode it.
        webhook_secret.removeprefix("whsec_"),
        os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        os.environ.get("AWS_SESSION_TOKEN", ""),
        # Quoted by a URL (blanked with its user info anyway) or by a library's message.
        *url_secrets(settings.broker_url),
        *url_secrets(settings.redis_url or ""),
        settings.sentinel_password.get_secret_value() if settings.sentinel_password else "",
    ]
    # Longest first, so that a secret containing another is blanked whole.
    _secrets[:] = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """text with URLs' user info, queries and fragments, and every secret, blanked."""
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _QUERY.sub(rf"\1?{REDACTED}", text)
    for secret in _secrets if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return text


def structlog_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: redact every text value of a log line."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message and its exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_filters(names: Iterable[str] = ("httpx", "httpcore")) -> None:
    """Redact the lines of libraries that log URLs themselves (httpx: every request's)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
