"""The Celery application."""

from __future__ import annotations

import structlog
from celery import Celery

from producer.settings import get_settings
from worker.config import celery_config
from worker.dialect import load_dialect
from worker.pump import PumpStep

structlog.configure(
    processors=[
        # The job id the failure boundary binds (worker/steps.py) lands in every line.
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
    ],
    logger_factory=structlog.PrintLoggerFactory(),
    cache_logger_on_first_use=True,
)

settings = get_settings()
# A dialect that is unknown or does not validate stops the worker at start, naming the
# setting and the field, instead of failing every job it would have run.
load_dialect(settings.api_dialect, str(settings.dialects_dir) if settings.dialects_dir else None)

app = Celery("videoqueue")
app.conf.update(celery_config(settings))
app.steps["worker"].add(PumpStep)
