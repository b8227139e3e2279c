"""The Celery application."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging

from producer.core.providers import providers
from producer.core.settings import get_settings
from worker import logs, redaction
from worker.config import celery_config
from worker.dialect import load_dialect
from worker.metrics import MetricsStep
from worker.pump import PumpStep


@setup_logging.connect
def _celery_logging(loglevel: Any = None, logfile: str | None = None, **_: Any) -> None:
    """Celery hands its logging to us: one format for its lines and ours (worker/logs.py)."""
    logs.configure(get_settings(), loglevel or "INFO", logfile)


@celeryd_init.connect
def _worker_starts(instance: Any = None, **_: Any) -> None:
    logs.take_over_worker_output(instance, get_settings())


settings = get_settings()
# Secrets are known to redaction before any line is written or any failure message stored
# (Job.fail), in this process and the pool processes forked from it.
redaction.configure(settings)
redaction.install_log_filters()
# A providers file or dialect that is unknown or does not validate stops the worker at start,
# naming the file or setting and the field, instead of failing every job it would have run.
for _provider in providers(settings):
    load_dialect(_provider.dialect, str(settings.dialects_dir) if settings.dialects_dir else None)

app = Celery("videoqueue")
app.conf.update(celery_config(settings))
app.steps["worker"].add(PumpStep)
app.steps["worker"].add(MetricsStep)
