"""`celery -A bench.instrumented_worker worker`: the product's worker app, plus a trace.

The benchmark needs, for every task a worker runs, when it was *meant* to start (a poll's ETA)
and when it *did* start and end. The product records neither, and the benchmark must not
change product code, so this module imports the unchanged app and attaches Celery signal
handlers to it from outside.

Each worker process appends one tab-separated line per event to its own file in
``$VQBENCH_TRACE_DIR`` (``trace-<pid>.tsv``)::

    S  <start s>  <task name>  <celery task id>  <job id>  <eta s, or ->  <redelivered 0|1>
    E  <end s>    <task name>  <celery task id>  <job id>

(times in epoch seconds)

Writes are unbuffered ``os.write`` calls on an ``O_APPEND`` descriptor: one short syscall
per event, nothing held in memory, and nothing lost when the worker is killed.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from celery.signals import task_postrun, task_prerun

from worker import app

celery = app

__all__ = ["app", "celery", "eta_epoch_s"]

_TRACE_DIR = os.environ.get("VQBENCH_TRACE_DIR", "")
# (pid, fd): prefork children inherit the parent's module state, so the descriptor is
# reopened whenever the pid changes.
_out: tuple[int, int] | None = None


def _fd() -> int | None:
    global _out
    if not _TRACE_DIR:
        return None
    pid = os.getpid()
    if _out is None or _out[0] != pid:
        path = os.path.join(_TRACE_DIR, f"trace-{pid}.tsv")
        _out = (pid, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    return _out[1]


def eta_epoch_s(eta: Any) -> float | None:
    """A task's ETA as epoch seconds: Celery hands it over as an ISO string or a datetime."""
    if eta is None or eta == "":
        return None
    if isinstance(eta, datetime):
        return eta.timestamp()
    try:
        return datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return None


def _job_id(args: Any) -> str:
    # Every pipeline task takes the job id first (submit, poll, finalize, notify).
    return str(args[0]) if args else "-"


@task_prerun.connect
def _started(task_id: str, task: Any, args: Any = None, **_: Any) -> None:
    now_s = time.time()
    fd = _fd()
    if fd is None:
        return
    request = task.request
    eta_s = eta_epoch_s(getattr(request, "eta", None))
    delivery = getattr(request, "delivery_info", None) or {}
    redelivered = 1 if delivery.get("redelivered") else 0
    eta_text = f"{eta_s:.6f}" if eta_s is not None else "-"
    line = f"S\t{now_s:.6f}\t{task.name}\t{task_id}\t{_job_id(args)}\t{eta_text}\t{redelivered}\n"
    os.write(fd, line.encode())


@task_postrun.connect
def _ended(task_id: str, task: Any, args: Any = None, **_: Any) -> None:
    now_s = time.time()
    fd = _fd()
    if fd is None:
        return
    os.write(fd, f"E\t{now_s:.6f}\t{task.name}\t{task_id}\t{_job_id(args)}\n".encode())
