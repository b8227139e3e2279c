"""The Celery application."""

from __future__ import annotations

import structlog
from celery import Celery

from producer.settings import get_settings
from worker import redaction
from worker.config import celery_config
from worker.pump import PumpStep

redaction.configure(get_settings())
redaction.install_log_filters()
structlog.configure(
    processors=[
        # The job id the failure boundary binds (worker/steps.py) lands in every line.
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redaction.structlog_processor,  # no secret, no signed URL in any line
        structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
    ],
    logger_factory=structlog.PrintLoggerFactory(),
    cache_logger_on_first_use=True,
)

app = Celery("videoqueue")
app.conf.update(celery_config(get_settings()))
app.steps["worker"].add(PumpStep)
