"""The main job on a fresh machine: an embedded local stack runs one job per feature.

Starts Redis (the machine's, or a private one), SeaweedFS as S3, the sandbox provider, a
webhook receiver, a Celery worker and the HTTP API; submits a text-to-video, an
image-to-video, a pro mode, a storyboard and a character job, in both API formats, and one
more through the HTTP API (POST /v1/videos with a tenant's key); shows their progress;
prints where each MP4 landed and the webhooks that arrived verified; then shuts everything
down.

    python -m ops.demo        (or: make demo)
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ops.dev import forget_deployment, pipeline_env
from ops.receiver import WebhookReceiver
from ops.sandbox import Sandbox, SandboxConfig
from ops.serve import serve_in_thread
from ops.stack import celery_worker, local_stack
from producer.characters import create_character
from producer.core.keys import create_key
from producer.core.records import TERMINAL, JobRecord, JobStatus
from producer.core.settings import Settings
from producer.http.app import create_app
from producer.jobs import enqueue, get

# Wide enough for the tables when the output is a file or a CI log, not a terminal.
console = Console() if sys.stdout.isatty() else Console(width=140)
TIMEOUT_S = 240.0
HTTP_FEATURE = "through the HTTP API (POST /v1/videos)"
# The job sent over HTTP, in OpenAI's words (seconds as text), as any backend would send it.
HTTP_REQUEST = {"model": "sora", "prompt": "A lighthouse in a storm, waves crashing",
                "size": "640x360", "seconds": "4"}  # fmt: skip


def _jobs(character_id: str) -> dict[str, dict[str, Any]]:
    return {
        "text-to-video (openai format)": {
            "model": "sora", "prompt": "A cat playing piano in a jazz club, cinematic lighting",
            "size": "640x360", "duration": 4, "api_format": "openai",
        },
        "text-to-video (unified format)": {
            "model": "sora", "prompt": "A cat playing piano in a jazz club, cinematic lighting",
            "aspect_ratio": "16:9", "duration": 4, "api_format": "unified",
        },
        "image-to-video": {
            "model": "sora", "prompt": "The person in the image starts dancing",
            "image_url": "https://example.com/portrait.jpg", "size": "640x360", "duration": 4,
        },
        "pro mode": {
            "model": "sora-pro", "prompt": "An epic battle scene in a fantasy world",
            "size": "640x360", "duration": 4,
        },
        "storyboard": {
            "model": "sora", "size": "640x360", "storyboard": [
                {"prompt": "A sunrise over the mountains", "duration": 2},
                {"prompt": "Camera pans down to reveal a village", "duration": 2},
                {"prompt": "Close-up of a farmer starting their day", "duration": 2},
            ],
        },
        "with a character": {
            "model": "sora", "prompt": "Luna walks through a neon-lit market",
            "characters": [character_id], "size": "360x640", "duration": 4,
            "metadata": {"campaign": "demo"},
        },
    }  # fmt: skip


def _progress_table(jobs: dict[str, str], records: dict[str, JobRecord], started: float) -> Table:
    table = Table(title=f"videoqueue demo — {time.monotonic() - started:5.1f} s")
    for col in ("feature", "job", "status", "progress", "polls"):
        table.add_column(col)
    colours = {JobStatus.COMPLETED: "green", JobStatus.FAILED: "red"}
    for feature, job_id in jobs.items():
        r = records[job_id]
        style = colours.get(r.status, "yellow")
        progress = f"{r.progress}%" if r.progress is not None else "-"
        table.add_row(feature, job_id[:16], f"[{style}]{r.status.value}[/]", progress, str(r.polls))
    return table


def main() -> int:
    """Run the demo; 0 when every job completed and every webhook verified."""
    workdir = Path(os.environ.get("VIDEOQUEUE_DEMO_DIR", ".stack")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = "sk-demo-" + secrets.token_hex(8)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    prefix = f"videoqueue-demo-{secrets.token_hex(4)}"

    with ExitStack() as stack:
        console.print("[bold]starting the local stack[/] (Redis, SeaweedFS)…")
        local = stack.enter_context(local_stack(workdir))
        # Half the sandbox's default generation times keeps the demo under a minute.
        sandbox = Sandbox(SandboxConfig(flavor="router", api_key=api_key, time_scale=0.5))
        api_url = stack.enter_context(sandbox.serve(host="127.0.0.1", port=0))
        receiver = WebhookReceiver(webhook_secret)
        hook_url = stack.enter_context(receiver.serve())
        # The demo's keys go with it; the machine's Redis is left as it was found.
        stack.callback(forget_deployment, local.broker_url, prefix)
        env = pipeline_env(
            local, prefix=prefix, provider_url=api_url, provider_key=api_key,
            webhook_secret=webhook_secret,
        )  # fmt: skip
        os.environ.update(env)
        settings = Settings()
        http_url = stack.enter_context(serve_in_thread(create_app(settings)))
        console.print(
            f"  redis  {local.broker_url}\n  s3     {local.s3.endpoint_url} "
            f"bucket {local.bucket}\n  api    {api_url} (sandbox)\n  hooks  {hook_url}\n"
            f"  http   {http_url} (videoqueue's own API)"
        )
        console.print("[bold]starting a celery worker[/]…")
        stack.enter_context(
            celery_worker(env, concurrency=4, logfile=workdir / "worker.log", name="demo")
        )

        character = create_character(
            {"name": "Luna", "description": "A young woman with long silver hair and blue eyes",
             "reference_images": ["https://example.com/character_ref.jpg"]},
            settings=settings,
        )  # fmt: skip
        console.print(f"created character [cyan]{character['id']}[/]")
        jobs = {
            feature: enqueue(request | {"webhook_url": hook_url}, settings=settings)
            for feature, request in _jobs(character["id"]).items()
        }
        _, tenant_key = create_key("demo", settings=settings)
        http = stack.enter_context(
            httpx.Client(base_url=http_url, headers={"Authorization": f"Bearer {tenant_key}"})
        )
        created = http.post("/v1/videos", json=HTTP_REQUEST | {"webhook_url": hook_url})
        created.raise_for_status()
        jobs[HTTP_FEATURE] = created.json()["id"]
        console.print(f"POST {http_url}/v1/videos -> {created.status_code} "
                      f"[cyan]{jobs[HTTP_FEATURE]}[/] (tenant demo)")  # fmt: skip
        started = time.monotonic()
        records = {job_id: get(job_id, settings=settings) for job_id in jobs.values()}
        with Live(_progress_table(jobs, records, started), console=console) as live:
            while not all(r.status in TERMINAL for r in records.values()):
                if time.monotonic() - started > TIMEOUT_S:
                    break
                time.sleep(0.5)
                records = {job_id: get(job_id, settings=settings) for job_id in jobs.values()}
                live.update(_progress_table(jobs, records, started))
        console.print()
        # Webhooks are sent right after each job ends; give the last one a moment.
        deadline = time.monotonic() + 15
        while len(receiver.verified_events()) < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.2)

        landed = Table(title="where each MP4 landed")
        for col in ("feature", "object", "bytes", "WxH", "seconds", "sha256", "poster"):
            landed.add_column(col)
        for feature, job_id in jobs.items():
            r = records[job_id]
            if r.output:
                o = r.output
                poster = f"{o.poster.width}x{o.poster.height}" if o.poster else "none"
                landed.add_row(
                    feature,
                    f"s3://{o.bucket}/{o.key}",
                    f"{o.size_bytes:,}",
                    f"{o.width}x{o.height}",
                    f"{o.duration_s:g}",
                    o.sha256[:12],
                    poster,
                )
            else:
                why = f"{r.error.code}: {r.error.message}" if r.error else r.status.value
                landed.add_row(feature, f"[red]{why}[/]", "", "", "", "", "")
        console.print(landed)

        hooks = Table(title="webhooks received (signature verified with standardwebhooks)")
        for col in ("type", "job", "webhook-id", "verified"):
            hooks.add_column(col)
        for d in receiver.deliveries:
            event = d.json or {}
            hooks.add_row(
                str(event.get("type")),
                str(event.get("data", {}).get("id", ""))[:16],
                d.headers.get("webhook-id", ""),
                "yes" if d.verified else "[red]NO[/]",
            )
        console.print(hooks)

        # The HTTP job as its backend sees it: the API's own answer, and the MP4 it serves.
        answer = http.get(f"/v1/videos/{jobs[HTTP_FEATURE]}").json()
        mp4 = http.get(f"/v1/videos/{jobs[HTTP_FEATURE]}/content")
        over_http = answer["status"] == "completed" and mp4.content[4:8] == b"ftyp"
        console.print(
            f"GET /v1/videos/{answer['id']} -> status {answer['status']}, progress "
            f"{answer['progress']}%; /content -> {mp4.status_code}, {len(mp4.content):,} bytes "
            f"of {mp4.headers.get('content-type')}"
        )

        creates = {t: s["creates"] for t, s in sandbox.stats()["tasks"].items()}
        console.print(f"provider tasks: {len(creates)}; creates per task: "
                      f"{sorted(set(creates.values()))}")  # fmt: skip
        ok = (
            over_http
            and all(r.status is JobStatus.COMPLETED for r in records.values())
            and len({d.headers.get("webhook-id") for d in receiver.deliveries if d.verified})
            == len(jobs)
        )
        console.print("[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]")
        console.print("shutting down…")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
