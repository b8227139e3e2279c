"""`videoqueue dev` as a newcomer runs it: a real subprocess, its printed URL and key used by
plain HTTP (no project import on the client's side), then Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from ops.serve import free_port

VIDEOQUEUE = Path(sys.executable).parent / "videoqueue"
STARTUP_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


class Output:
    """The process's output, read on a thread so that waiting for a line can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._fresh: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._reader = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Once the process has ended: the rest of its output read, the pipe closed."""
        self._reader.join(timeout=10)
        self._stdout.close()

    def _read(self, stdout: object) -> None:
        for line in stdout:  # type: ignore[attr-defined]
            self.lines.append(line)
            self._fresh.put(line)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first line (past or future) matching pattern."""
        compiled = re.compile(pattern)
        for line in list(self.lines):
            if m := compiled.search(line):
                return m
        deadline = time.monotonic() + timeout_s
        while (remaining_s := deadline - time.monotonic()) > 0:
            try:
                line = self._fresh.get(timeout=remaining_s)
            except queue.Empty:
                break
            if m := compiled.search(line):
                return m
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.text}")

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


@dataclass
class Dev:
    """A running `videoqueue dev`: its process, output, and every process it started."""

    proc: subprocess.Popen[str]
    out: Output
    children: list[psutil.Process] = field(default_factory=list)

    def stop(self, sig: signal.Signals) -> None:
        """Send sig; assert it exits 0 having stopped every process it started."""
        self.proc.send_signal(sig)
        assert self.proc.wait(timeout=STOP_TIMEOUT_S) == 0, self.out.text
        assert f"{sig.name}: everything stopped" in self.out.text
        _, alive = psutil.wait_procs(self.children, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]


@contextlib.contextmanager
def running_dev(redis_url: str, workdir: Path, *options: str) -> Iterator[Dev]:
    """`videoqueue dev OPTIONS` until its banner is printed; killed (with every process it
    started) if the block leaves it running."""
    argv = [str(VIDEOQUEUE), "dev", "--workdir", str(workdir), "--redis-url", redis_url,
            *options]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )  # fmt: skip
    dev = Dev(proc, Output(proc))
    try:
        dev.out.wait_for(r"export VIDEOQUEUE_URL_ALLOWLIST=", STARTUP_TIMEOUT_S)
        # SeaweedFS and the celery worker (its main process and its pool) run in sessions of
        # their own, so Ctrl-C at a terminal reaches only dev itself: it must stop them.
        dev.children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in dev.children)
        assert "weed server" in names and "celery" in names, names
        yield dev
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(dev.children)
        dev.out.close()


@pytest.mark.timeout(STARTUP_TIMEOUT_S + JOB_TIMEOUT_S + STOP_TIMEOUT_S + 60)
def test_videoqueue_dev_serves_a_job_to_plain_http_and_ctrl_c_stops_every_child(
    redis_url: str, tmp_path: Path
) -> None:
    """The printed key creates a job over HTTP; it completes, its MP4 downloads, the receiver
    prints its webhook; SIGINT then stops every process dev started and removes its keys."""
    port = free_port()
    with running_dev(
        redis_url, tmp_path / "dev", "--port", str(port), "--tenant", "acme-dev"
    ) as dev:
        out = dev.out
        api = out.wait_for(r"^  api\s+(http://\S+)", 0).group(1)
        key = out.wait_for(r"^  key\s+(vq_\S+)", 0).group(1)
        hook = out.wait_for(r"^  webhooks\s+(http://\S+)", 0).group(1)
        prefix = out.wait_for(r"export VIDEOQUEUE_KEY_PREFIX=(\S+)", 0).group(1)
        assert out.wait_for(r"^  tenant\s+(\S+)", 0).group(1) == "acme-dev"
        assert api == f"http://127.0.0.1:{port}"
        assert out.wait_for(r"^  curl .*Authorization: Bearer (vq_\S+?)'", 0).group(1) == key

        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}) as client:
            created = client.post(
                "/v1/videos",
                json={"model": "sora", "prompt": "a fox in the snow", "size": "640x360",
                      "seconds": "4", "webhook_url": hook},
            )  # fmt: skip
            assert created.status_code == 200, created.text
            video_id = created.json()["id"]
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while (video := client.get(f"/v1/videos/{video_id}").json())["status"] not in (
                "completed",
                "failed",
            ):
                assert time.monotonic() < deadline, video
                time.sleep(0.3)
            assert video["status"] == "completed", video
            mp4 = client.get(f"/v1/videos/{video_id}/content")
            assert mp4.status_code == 200
            assert mp4.headers["content-type"] == "video/mp4"
            assert mp4.content[4:8] == b"ftyp"
        # video.url is signed: fetched with no key at all, as a browser would.
        assert httpx.get(video["video"]["url"]).content == mp4.content
        out.wait_for(rf"\[webhook .*\] video\.completed {video_id} .*signature verified", 30)

        dev.stop(signal.SIGINT)
        try:
            httpx.get(f"{api}/healthz", timeout=2)
            raise AssertionError("the API still answers after Ctrl-C")
        except httpx.ConnectError:
            pass
        client_ = redis.Redis.from_url(redis_url)
        try:
            assert list(client_.scan_iter(f"*{prefix}*")) == []
        finally:
            client_.close()


@pytest.mark.timeout(STARTUP_TIMEOUT_S + STOP_TIMEOUT_S + 60)
def test_videoqueue_dev_stops_every_child_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    """SIGTERM (a process manager's stop, `kill`) is a Ctrl-C too: nothing left running."""
    with running_dev(redis_url, tmp_path / "dev", "--port", "0") as dev:
        dev.stop(signal.SIGTERM)


def test_videoqueue_dev_refuses_a_bad_tenant_or_a_taken_port_before_starting_anything(
    tmp_path: Path,
) -> None:
    """Exit 2 naming the option, and no SeaweedFS or worker started (nothing in workdir)."""
    workdir = tmp_path / "dev"
    bad = subprocess.run(
        [str(VIDEOQUEUE), "dev", "--tenant", "no spaces", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "tenant" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [str(VIDEOQUEUE), "dev", "--port", str(port), "--workdir", str(workdir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert busy.returncode == 2, busy.stderr
    assert "--port" in busy.stderr and str(port) in busy.stderr
    assert not workdir.exists()
