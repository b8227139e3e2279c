"""Run a command that starts services of its own, and leave none of them behind."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

# How long a run that was interrupted gets to stop the services it started (each in a
# session of its own, out of reach of a signal to the run's group).
TEARDOWN_GRACE_S = 60.0


def run_whole(args: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run args in a process group of its own for up to timeout_s. A run still going then (or
    when the test itself is interrupted) gets SIGINT, so that its context managers stop the
    redis-server, SeaweedFS and celery workers it started, and SIGKILL after the grace."""
    proc = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stdout, stderr = _interrupt(proc)
        raise AssertionError(
            f"{' '.join(args)} still running after {timeout_s:g} s\n"
            f"{stdout[-3000:]}{stderr[-5000:]}"
        ) from None
    except BaseException:
        _interrupt(proc)
        raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=TEARDOWN_GRACE_S)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()
