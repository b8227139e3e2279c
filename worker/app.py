"""The Celery application.

Importing it does nothing but build the app: the settings are read when Celery first needs
its configuration, and checked, with the metrics' directory chosen, when a worker starts.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging

from producer.core.errors import InvalidConfiguration
from producer.core.providers import providers
from producer.core.settings import Settings, get_settings
from worker import logs, metrics
from worker.config import celery_config
from worker.dialect import DialectError, load_dialect
from worker.metrics import MetricsStep
from worker.pump import PumpStep


@setup_logging.connect
def _celery_logging(loglevel: Any = None, logfile: str | None = None, **_: Any) -> None:
    """Celery hands its logging to us: one format for its lines and ours (worker/logs.py)."""
    logs.configure(get_settings(), loglevel or "INFO", logfile)


@celeryd_init.connect
def _worker_starts(instance: Any = None, **_: Any) -> None:
    """A worker starts (before its pool forks, before any task): check what it will run with."""
    settings = get_settings()
    try:
        check_providers(settings)
    except (InvalidConfiguration, DialectError) as e:
        # Celery logs and swallows a signal handler's exception: only an exit stops it.
        raise SystemExit(f"videoqueue worker: {e}") from None
    metrics.use_multiprocess_dir(settings)
    # Secrets are known to redaction from here (logs.configure), before any line is written
    # or any failure message stored (Job.fail), here and in the pool processes forked later.
    logs.take_over_worker_output(instance, settings)


def check_providers(settings: Settings) -> None:
    """A providers file or dialect that is unknown or does not validate stops the worker at
    start, naming the file or setting and the field, instead of failing every job it would
    have run.

    Raises:
        InvalidConfiguration: the providers file.
        DialectError: a dialect.
    """
    for provider in providers(settings):
        load_dialect(
            provider.dialect, str(settings.dialects_dir) if settings.dialects_dir else None
        )


app = Celery("videoqueue")
app.add_defaults(lambda: celery_config(get_settings()))  # read when first needed, not here
app.steps["worker"].add(PumpStep)
app.steps["worker"].add(MetricsStep)
