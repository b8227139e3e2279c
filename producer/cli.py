"""The `videoqueue` command line: submit jobs, read them, wait for them, cancel them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from producer.characters import create_character
from producer.errors import InvalidRequest, JobNotFound, VideoqueueError, WaitTimeout
from producer.jobs import cancel, enqueue, get, wait
from producer.records import JobStatus

app = typer.Typer(
    name="videoqueue",
    help="Queue video generation jobs; workers submit, poll, store the MP4 in S3 and call back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
character_app = typer.Typer(help="Reusable characters (POST /sora/v1/characters).")
app.add_typer(character_app, name="character")

out = Console()
err = Console(stderr=True)


def _read_json(source: str) -> Any:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        _die(f"{source}: not valid JSON: {e}")


def _die(message: str, code: int = 2) -> Any:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@app.command()
def submit(
    file: Annotated[str | None, typer.Argument(help="Request JSON file, or - for stdin.")] = None,
    prompt: Annotated[str | None, typer.Option(help="The prompt.")] = None,
    model: Annotated[str | None, typer.Option(help="Model, e.g. sora or sora-pro.")] = None,
    size: Annotated[str | None, typer.Option(help='Size "WxH", e.g. 1280x720.')] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help='e.g. "16:9".')] = None,
    duration: Annotated[int | None, typer.Option(help="Seconds of video.")] = None,
    image_url: Annotated[str | None, typer.Option(help="Reference image (image-to-video).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where to POST the result.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Dedupe key.")] = None,
    api_format: Annotated[str | None, typer.Option(help="openai | unified")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wait_: Annotated[bool, typer.Option("--wait", help="Block until the job ends.")] = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many s.")] = 900,
) -> None:
    """Queue one generation job and print its id."""
    request: dict[str, Any] = _read_json(file) if file else {}
    if not isinstance(request, dict):
        _die("the request must be a JSON object")
    flags = {
        "prompt": prompt, "model": model, "size": size, "aspect_ratio": aspect_ratio,
        "duration": duration, "image_url": image_url, "webhook_url": webhook_url,
        "idempotency_key": idempotency_key, "api_format": api_format,
    }  # fmt: skip
    request.update({k: v for k, v in flags.items() if v is not None})
    try:
        job_id = enqueue(request)
    except InvalidRequest as e:
        _die(str(e))
    except VideoqueueError as e:
        _die(str(e), 1)
    if not wait_:
        _print_json({"id": job_id}) if as_json else typer.echo(job_id)
        return
    if not as_json:
        err.print(f"queued {job_id}; waiting…")
    _wait_and_report(job_id, timeout, as_json)


def _wait_and_report(job_id: str, timeout: float, as_json: bool) -> None:
    try:
        record = wait(job_id, timeout)
    except WaitTimeout as e:
        _die(str(e), 1)
    if as_json:
        _print_json(record.public())
    else:
        where = f" -> s3://{record.output.bucket}/{record.output.key}" if record.output else ""
        why = f": {record.error.code}: {record.error.message}" if record.error else ""
        typer.echo(f"{job_id} {record.status.value}{where}{why}")
    if record.status is not JobStatus.COMPLETED:
        raise typer.Exit(1)


@app.command()
def status(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record.")] = False,
) -> None:
    """Show a job's record."""
    try:
        record = get(job_id)
    except JobNotFound as e:
        _die(str(e), 1)
    if as_json:
        _print_json(record.public())
    else:
        typer.echo(f"{record.id} {record.status.value} progress={record.progress}")


@app.command("wait")
def wait_command(
    job_id: str,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record.")] = False,
) -> None:
    """Block until a job ends; exit 0 only if it completed."""
    try:
        _wait_and_report(job_id, timeout, as_json)
    except JobNotFound as e:
        _die(str(e), 1)


@app.command("cancel")
def cancel_command(job_id: str) -> None:
    """Cancel a job that has not ended."""
    try:
        record = cancel(job_id)
    except JobNotFound as e:
        _die(str(e), 1)
    typer.echo(f"{record.id} {record.status.value}")


@character_app.command("create")
def character_create(
    file: Annotated[str, typer.Argument(help="Character JSON file, or - for stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a character: {"name", "description", "reference_images": [...]}."""
    try:
        answer = create_character(_read_json(file))
    except InvalidRequest as e:
        _die(str(e))
    except VideoqueueError as e:
        _die(str(e), 1)
    _print_json(answer) if as_json else typer.echo(answer.get("id"))
