"""Worker logging: structlog through the standard library, so Celery's lines and ours share
one format.

Our loggers (structlog) and every standard-library logger (Celery's, kombu's, ...) end in
one handler on the root logger whose ProcessorFormatter renders each record as a readable
line (VIDEOQUEUE_LOG_FORMAT=console) or as one JSON object (json). The context a step binds
(worker/steps.py: job id, batch id, provider task id, step) lands in every line logged while
it runs, Celery's included.

No line carries a secret: every value passes through worker/redaction.py (the API key, the
webhook secret and S3's secret key blanked; a URL's user info, query and fragment, where
signed file URLs keep their signature, dropped).
httpx's own request lines (full URLs at INFO) are silenced: the provider client and the
metrics say what was requested.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import structlog
from structlog.types import EventDict, Processor

from producer.core.settings import LogFormat, Settings
from worker import redaction

# Loggers that print whole request URLs at INFO.
_QUIET = ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3")


def _redact(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """A processor that passes every value of a line through worker/redaction.py."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redaction.redact(value)
        elif value is not None and not isinstance(value, int | float | bool):
            event[key] = redaction.redact(str(value))
    return event


def configure(
    settings: Settings, level: int | str = logging.INFO, logfile: str | None = None
) -> None:
    """Route structlog and the standard library's logging through one formatter."""
    redaction.configure(settings)
    redaction.install_log_filters()
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
            _redact,
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
