"""`videoqueue sandbox` as a user starts it: a subprocess serving on a port."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from ops.serve import free_port
from tests.e2e.sandbox_helpers import probe

KEY = "sk-cli-test"


def _command() -> list[str]:
    script = Path(sys.executable).parent / "videoqueue"
    if script.exists():
        return [str(script)]
    # Not installed (pip install -e .): the same typer app, started by hand.
    return [sys.executable, "-c", "from ops.cli import app; app()"]


def test_the_cli_serves_the_api_until_terminated(tmp_path):
    port = free_port()
    profile = tmp_path / "profile.toml"
    profile.write_text('flavor = "openai"\nvocabulary = "alt"\ntime_scale = 0.02\n')
    args = ["sandbox", "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY,
            "--flavor", "router", "--profile", str(profile)]  # fmt: skip
    proc = subprocess.Popen(
        [*_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/_sandbox/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.05)

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}) as client:
            made = client.post("/v1/videos", json={"model": "sora", "prompt": "a cat",
                                                   "size": "64x48", "duration": 2})  # fmt: skip
            assert made.status_code == 200, made.text
            task_id = made.json()["id"]
            assert task_id.startswith("sora_task_")  # --flavor router beat the profile
            deadline = time.monotonic() + 20
            while (body := client.get(f"/v1/videos/{task_id}").json())["status"] != "succeeded":
                assert time.monotonic() < deadline, body  # the profile's alt vocabulary
                time.sleep(0.05)
            assert probe(httpx.get(body["video"]["url"]).content) == (64, 48, 2.0)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}" in output


def test_the_cli_refuses_a_bad_knob():
    result = subprocess.run(
        [*_command(), "sandbox", "--flavor", "nope", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "flavor" in result.stdout + result.stderr
