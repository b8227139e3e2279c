"""`celery -A tests.e2e.chatty_worker worker`: the product's worker with httpx's request
lines (INFO) and urllib3's (DEBUG: S3's requests) on, as an operator tracing a provider or S3
would turn them on. The product silences them (worker/logs.py); here every status query, also
from a poll's threads, and every part of an upload, sent from threads, writes one.
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
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
