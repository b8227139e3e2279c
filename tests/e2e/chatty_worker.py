"""`celery -A tests.e2e.chatty_worker worker`: the product's worker with httpx's request
lines on (INFO), as an operator tracing a provider would turn them on. The product silences
them (worker/logs.py); here every status query, also from a poll's threads, writes one.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init

from worker import app

celery = app

__all__ = ["app", "celery"]


@worker_process_init.connect
def _httpx_talks(**_: Any) -> None:
    logging.getLogger("httpx").setLevel(logging.INFO)
