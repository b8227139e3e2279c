"""`celery -A bench.instrumented_worker worker`: the product's worker app, plus a trace.

The benchmark needs, for every task a worker runs, when it started and ended, and, for the
durable schedule, how late due work was picked up. The product records neither, and the
benchmark must not change product code, so this module imports the unchanged app, attaches
Celery signal handlers to it and wraps ``Pump.claim_due`` (worker/pump.py) from outside: the
claim script already returns, per lane, how many entries it claimed, their summed lateness and
the worst one (``Claimed``); the wrapper writes them down and calls through unchanged.

Each worker process appends one tab-separated line per event to its own file in
``$VQBENCH_TRACE_DIR`` (``trace-<pid>.tsv``)::

    S  <start s>  <task name>  <task id = claim token>  <members, comma-separated>  <redelivered>
    E  <end s>    <task name>  <task id>
    C  <claimed s>  <lane>  <entries>  <lateness total s>  <lateness max s>
       <token prefix>  <first seq>  <last seq>                           (one line, tab-separated)

(times in epoch seconds; redelivered is 0 or 1). A ``C`` line is one lane's share of one
pass of the pump (the worker's main process) that claimed anything; its messages' Celery task
ids are the claim tokens ``<token prefix><seq>`` for seq in first..last, so a task's ``S``
line finds the claim it came from. The token range is read from the claim counter right
after the pass: exact while one pump serves the deployment (every scenario that uses it runs
one worker).

Writes are unbuffered ``os.write`` calls on an ``O_APPEND`` descriptor: one short syscall
per event, nothing held in memory, and nothing lost when the worker is killed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from producer.core.names import LANES, Lane
from worker import app
from worker.pump import Claimed, Pump

celery = app

__all__ = ["app", "celery"]

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


def _members(args: Any) -> str:
    # Every task takes its claim's members first: a list of job (or batch) ids.
    if not args:
        return "-"
    first = args[0]
    if isinstance(first, list | tuple):
        return ",".join(str(m) for m in first) or "-"
    return str(first)


@task_prerun.connect
def _started(task_id: str, task: Any, args: Any = None, **_: Any) -> None:
    now_s = time.time()
    fd = _fd()
    if fd is None:
        return
    delivery = getattr(task.request, "delivery_info", None) or {}
    redelivered = 1 if delivery.get("redelivered") else 0
    line = f"S\t{now_s:.6f}\t{task.name}\t{task_id}\t{_members(args)}\t{redelivered}\n"
    os.write(fd, line.encode())


@task_postrun.connect
def _ended(task_id: str, task: Any, **_: Any) -> None:
    now_s = time.time()
    fd = _fd()
    if fd is None:
        return
    os.write(fd, f"E\t{now_s:.6f}\t{task.name}\t{task_id}\n".encode())


_claim_due = Pump.claim_due


def _traced_claim_due(self: Pump) -> dict[Lane, Claimed]:
    """Pump.claim_due, unchanged, then one ``C`` line per lane that claimed anything."""
    claimed = _claim_due(self)
    now_s = time.time()
    fd = _fd()
    if fd is None or not any(c.entries for c in claimed.values()):
        return claimed
    last = int(self.redis.get(self.keys.claim_seq()) or 0)
    per_lane = []
    for lane in LANES:  # the order the pass claimed lanes in, and so issued tokens in
        c = claimed.get(lane)
        if c is None or not c.entries:
            continue
        per = self.settings.poll_batch_size if lane is Lane.POLL else 1
        per_lane.append((lane, c, -(-c.entries // per)))
    seq = last - sum(messages for _, _, messages in per_lane) + 1
    lines = []
    for lane, c, messages in per_lane:
        lines.append(
            f"C\t{now_s:.6f}\t{lane.value}\t{c.entries}\t{c.lateness_total_s:.3f}\t"
            f"{c.lateness_max_s:.3f}\t{self.token_prefix}\t{seq}\t{seq + messages - 1}\n"
        )
        seq += messages
    os.write(fd, "".join(lines).encode())
    return claimed


Pump.claim_due = _traced_claim_due  # type: ignore[method-assign]
