"""Worker logging: structlog through the standard library, so Celery's lines and ours share
one format.

Our loggers (structlog) and every standard-library logger (Celery's, kombu's, ...) end in
one handler on the root logger whose ProcessorFormatter renders each record as a readable
line (VIDEOQUEUE_LOG_FORMAT=console) or as one JSON object (json). The context a step binds
(worker/steps.py: job id, batch id, provider task id, step) lands in every line logged while
it runs, Celery's included.

No line carries a secret: the API key and the webhook secret are replaced wherever they
appear, and a URL's query string (where signed file URLs keep their signature) is dropped.
httpx's own request lines (full URLs at INFO) are silenced: the provider client and the
metrics say what was requested.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

import structlog
from structlog.types import EventDict, Processor

from producer.providers import api_key, providers
from producer.settings import LogFormat, Settings

# A URL's query string: signed URLs carry their signature there (sig=, X-Amz-Signature=...).
_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s#\"'<>]*")
# Loggers that print whole request URLs at INFO.
_QUIET = ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3")


class Redactor:
    """A processor that removes secrets and URL query strings from every string value."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return _QUERY.sub(r"\1?[redacted]", text)

    def __call__(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.scrub(value)
            elif value is not None and not isinstance(value, int | float | bool):
                event[key] = self.scrub(str(value))
        return event


def configure(
    settings: Settings, level: int | str = logging.INFO, logfile: str | None = None
) -> None:
    """Route structlog and the standard library's logging through one formatter."""
    secrets = [settings.api_key.get_secret_value()]
    secrets += [api_key(p, settings).get_secret_value() for p in providers(settings)]
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        # The key itself too, the way Standard Webhooks libraries decode it.
        secrets += [secret, secret.removeprefix("whsec_")]
    redact = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Processor
    if settings.log_format is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
    else:
        # Values quoted (job_id='job_…'), so a line splits back into its fields.
        renderer = structlog.dev.ConsoleRenderer(colors=False, repr_native_str=True)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # tracebacks as text, to be scrubbed too
            redact,
            renderer,
        ],
    )
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def take_over_worker_output(worker: Any, settings: Settings) -> None:
    """At a worker's start (celeryd_init, before anything is printed): logging as configured,
    Python warnings through it (Celery warns about running as root before it sets up its
    logging), and in JSON form no line that is not JSON: the banner becomes one log line and
    the shutdown notice, written from a signal handler, one JSON object."""
    configure(settings)
    logging.captureWarnings(True)
    if settings.log_format is not LogFormat.JSON:
        return
    worker.quiet = True
    structlog.get_logger("celery.apps.worker").info(
        "worker starting", hostname=getattr(worker, "hostname", None)
    )
    import celery.apps.worker

    celery.apps.worker.safe_say = _say_json


def _say_json(msg: str, f: Any = None) -> None:
    """Celery's safe_say, as a JSON line. It runs in signal handlers, where the logging
    module's locks may be held by the interrupted code: so a plain os.write, as Celery does."""
    line = {
        "event": msg,
        "level": "warning",
        "logger": "celery.apps.worker",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    # Best effort, as Celery's own: a lost notice must not break the shutdown.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stream: Any = f or sys.__stderr__
        os.write(stream.fileno(), (json.dumps(line) + "\n").encode())
