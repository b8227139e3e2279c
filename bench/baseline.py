"""The comparison: one thread per job, blocking in a create-and-poll loop.

This is what OpenAI's SDK does in ``client.videos.create_and_poll``: create the video, then
GET it, sleep (``openai-poll-after-ms`` if the first answer has it, else 1 s) and GET again
until it is completed or failed. Like the SDK, all threads share one HTTP client with
1,000 connections (100 kept alive), a 600 s timeout, and two retries of a failed call with
exponential backoff (0.5 s doubling to 8 s, jittered); a job whose call still fails is
abandoned, as the SDK's exception would end its wait.

It runs as its own process so that its memory, threads and CPU are measured apart from
everything else::

    python -m bench.baseline SPEC.json OUT.json

SPEC is ``{"api_url", "api_key", "requests": [body, ...], "interval_s", "window_s"}``:
``window_s`` null waits until every job ends (or ``timeout_s``), a number stops polling that
long after the last thread started; an optional ``time_scale`` multiplies the SDK's retry
delays, for a scenario that runs the provider's clock (and the 1 s interval) that much
faster. OUT holds per-job results and a once-a-second series of the process's own threads,
RSS, CPU, calls and errors.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

# OpenAI's SDK defaults (openai._constants).
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE_CONNECTIONS = 100
TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 5.0
MAX_RETRIES = 2
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
TERMINAL = {"completed", "failed"}


@dataclass
class Job:
    """One thread's job and what it saw.

    Lateness and request times are kept in float32 arrays (4 bytes a sample) so that the
    bookkeeping adds little to the memory being measured.
    """

    body: dict[str, Any]
    task_id: str | None = None
    created_at: float | None = None
    done_at: float | None = None
    calls: int = 0
    abandoned: bool = False
    lateness_s: array = field(default_factory=lambda: array("f"))
    request_s: array = field(default_factory=lambda: array("f"))


class Loop:
    """Runs a thread per job and keeps count of what happens."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.interval_s = float(spec["interval_s"])
        self.window_s = spec.get("window_s")
        self.timeout_s = float(spec.get("timeout_s") or 3600)
        self.time_scale = float(spec.get("time_scale") or 1.0)
        self.jobs = [Job(body) for body in spec["requests"]]
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()
        self.client = httpx.Client(
            base_url=spec["api_url"],
            headers={"Authorization": f"Bearer {spec['api_key']}"},
            timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
            ),
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call with the SDK's retries; raises when the last attempt fails."""
        for attempt in range(MAX_RETRIES + 1):
            try:
                response = self.client.request(method, path, **kwargs)
                if response.status_code != 429 and response.status_code < 500:
                    response.raise_for_status()
                    return response
                self.errors[f"http_{response.status_code}"] += 1
                if attempt == MAX_RETRIES:
                    response.raise_for_status()
            except httpx.TransportError as e:
                self.errors[type(e).__name__] += 1
                if attempt == MAX_RETRIES:
                    raise
            delay_s = min(MAX_RETRY_DELAY_S, INITIAL_RETRY_DELAY_S * 2**attempt) * self.time_scale
            if self.stop.wait(delay_s * random.uniform(0.75, 1.0)):
                raise httpx.TransportError("stopped")
        raise AssertionError("unreachable")

    def watch(self, job: Job) -> None:
        """create_and_poll for one job."""
        try:
            created = self._call("POST", "/v1/videos", json=job.body).json()
            job.task_id, job.created_at = created["id"], time.time()
            interval_s: float | None = None
            due_at: float | None = None
            while not self.stop.is_set():
                start = time.time()
                if due_at is not None:
                    job.lateness_s.append(start - due_at)
                response = self._call("GET", f"/v1/videos/{job.task_id}")
                job.calls += 1
                job.request_s.append(time.time() - start)
                if response.json().get("status") in TERMINAL:
                    job.done_at = time.time()
                    return
                if interval_s is None:
                    # The SDK reads the hint once, then keeps that interval.
                    hint = response.headers.get("openai-poll-after-ms")
                    interval_s = int(hint) / 1000 if hint else self.interval_s
                due_at = time.time() + interval_s
                if self.stop.wait(interval_s):
                    return
        except (httpx.HTTPError, ValueError, KeyError) as e:
            if not self.stop.is_set():
                job.abandoned = True
                self.errors[f"abandoned:{type(e).__name__}"] += 1

    def run(self) -> dict[str, Any]:
        """Start every thread, poll for the window (or until all end), and report."""
        me = psutil.Process()
        t0 = time.time()
        series: list[list[float]] = []
        threads = [
            threading.Thread(target=self.watch, args=(job,), daemon=True) for job in self.jobs
        ]
        start_failures = 0
        for thread in threads:
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread": the OS said no
                start_failures += 1
        started_at = time.time()
        end_at = started_at + (self.window_s if self.window_s is not None else self.timeout_s)
        peak_rss = 0.0
        while True:
            cpu = me.cpu_times()
            rss = float(me.memory_info().rss)
            peak_rss = max(peak_rss, rss)
            calls = sum(job.calls for job in self.jobs)
            live = threading.active_count() - 1
            series.append(
                [
                    round(time.time() - t0, 3),
                    live,
                    rss,
                    cpu.user + cpu.system,
                    calls,
                    sum(self.errors.values()),
                ]
            )
            if time.time() >= end_at or live == 0:
                break
            time.sleep(1.0)
        self.stop.set()
        window_end = time.time()
        for thread in threads:
            thread.join(timeout=max(0.0, window_end + 30 - time.time()))
        self.client.close()
        empty = np.zeros(0, dtype=np.float32)
        lateness = np.concatenate(
            [np.frombuffer(j.lateness_s, dtype=np.float32) for j in self.jobs] or [empty]
        )
        request = np.concatenate(
            [np.frombuffer(j.request_s, dtype=np.float32) for j in self.jobs] or [empty]
        )

        def pct(values: np.ndarray, q: float) -> float | None:
            return float(np.percentile(values, q)) if len(values) else None

        return {
            "jobs": len(self.jobs),
            "threads_started": len(threads) - start_failures,
            "thread_start_failures": start_failures,
            "created": sum(j.task_id is not None for j in self.jobs),
            "finished": sum(j.done_at is not None for j in self.jobs),
            "abandoned": sum(j.abandoned for j in self.jobs),
            "errors": dict(self.errors),
            "calls": int(sum(j.calls for j in self.jobs)),
            "started_s": round(started_at - t0, 3),
            "window_s": round(window_end - started_at, 3),
            "peak_rss_bytes": peak_rss,
            "lateness_s": {q: pct(lateness, q) for q in (50, 90, 99)},
            "request_s": {q: pct(request, q) for q in (50, 90, 99)},
            "series_columns": ["t_s", "threads", "rss_bytes", "cpu_s", "calls", "errors"],
            "series": series,
            "per_job": [[j.task_id, j.created_at, j.done_at, j.calls] for j in self.jobs],
        }


def run_in_subprocess(spec: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """Run the loop as ``python -m bench.baseline`` and return its report.

    The child leads its own process group and is killed with it if this raises or the
    loop overruns its window by more than five minutes.

    Raises:
        RuntimeError: when the child fails; the message holds its output's tail.
    """
    import os
    import signal
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / f"{label}-spec.json", workdir / f"{label}-out.json"
    log_path = workdir / f"{label}.log"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    # Starting 10,000 threads and their creates takes about a minute on a 2-core host, and
    # stopping them up to 30 s more.
    limit_s = float(spec.get("window_s") or spec.get("timeout_s") or 3600) + 300
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.baseline", str(spec_path), str(out_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=limit_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0 or not out_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"baseline exited with {code}: {tail}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def main(argv: list[str]) -> int:
    """``python -m bench.baseline SPEC.json OUT.json``."""
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    result = Loop(json.loads(spec_path.read_text())).run()
    out_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
