"""The `videoqueue` command line: submit jobs, read them, wait for them, cancel them."""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from pydantic import ValidationError
from rich.console import Console
from typer.core import TyperGroup

from producer.batches import cancel_batch, enqueue_batch, get_batch
from producer.characters import create_character
from producer.core.errors import (
    BudgetExceeded,
    InvalidConfiguration,
    InvalidRequest,
    JobNotFound,
    NotEnoughReplicas,
    VideoqueueError,
    WaitTimeout,
)
from producer.core.records import ACTIVE, BatchRecord, JobStatus
from producer.core.redis_client import describe
from producer.core.settings import get_settings
from producer.jobs import cancel, enqueue, get, wait


class _Commands(TyperGroup):
    """Every command answers an outage of Redis or S3 with one line naming what is
    unreachable (or, for a Redis that refuses writes, what it refused), and exit code 1,
    never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            s = get_settings()
            what = f"Redis at {describe(s.records_url, s.sentinel_master)}"
            _unreachable(what, e)
        except NotEnoughReplicas as e:
            s = get_settings()
            _die(f"Redis at {describe(s.records_url, s.sentinel_master)}: {e}", code=1)
        except ValidationError as e:
            if e.title != "Settings":
                raise
            settings_refused(e)
        except InvalidConfiguration as e:  # a file a setting names (VIDEOQUEUE_PROVIDERS_FILE)
            _die(str(e))
        except Exception as e:
            if type(e).__module__.startswith("botocore") and _is_connection_error(e):
                _unreachable(f"S3 at {get_settings().s3_endpoint_url or 'AWS'}", e)
            raise


def settings_refused(error: ValidationError) -> None:
    """The environment is wrong: one line per setting naming it, never its value (a Redis URL
    may carry its password); exit 2."""
    for problem in error.errors():
        field = f"VIDEOQUEUE_{'_'.join(str(p) for p in problem['loc']).upper()}"
        message = str(problem["msg"]).removeprefix("Value error, ")
        where = "" if message.startswith(field) else f"{field}: "
        err.print(f"[red]error:[/red] {where}{message}", highlight=False)
    raise typer.Exit(2) from None


def _unreachable(what: str, error: Exception) -> None:
    err.print(f"[red]error:[/red] {what} is unreachable ({type(error).__name__})", highlight=False)
    raise typer.Exit(1)


def _is_connection_error(e: Exception) -> bool:
    """botocore's failures to reach the endpoint (without importing botocore here)."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                         "ConnectionClosedError"})  # fmt: skip


app = typer.Typer(
    name="videoqueue",
    help="Queue video generation jobs; workers submit, poll, store the MP4 in S3 and call back.",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
character_app = typer.Typer(help="Reusable characters (POST /sora/v1/characters).")
app.add_typer(character_app, name="character")

out = Console()
# Never wrapped: an error is one line, whatever the terminal's width.
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"videoqueue {package_version('videoqueue')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Queue video generation jobs; workers submit, poll, store the MP4 in S3 and call back.

    Exit codes: 0 success; 1 the job failed or was not found, a check failed, Redis or S3
    is unreachable, or Redis refused a write; 2 invalid input.
    """


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
    tenant: Annotated[str | None, typer.Option(help='Who the job belongs to ("default").')] = None,
    priority: Annotated[
        int | None, typer.Option(help="Among the tenant's waiting jobs, higher first (0).")
    ] = None,
    deadline_s: Annotated[
        float | None, typer.Option(help="Fail it (deadline_exceeded) if not done this long after.")
    ] = None,
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
        "idempotency_key": idempotency_key, "api_format": api_format, "priority": priority,
        "deadline_s": deadline_s,
    }  # fmt: skip
    request.update({k: v for k, v in flags.items() if v is not None})
    try:
        job_id = enqueue(request, tenant=tenant)
    except (InvalidRequest, InvalidConfiguration) as e:
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the public job object.")] = False,
    debug: Annotated[
        bool,
        typer.Option(help="Print the whole stored record as JSON, the scheduler's fields too."),
    ] = False,
) -> None:
    """Show a job's record."""
    try:
        record = get(job_id)
    except JobNotFound as e:
        _die(str(e), 1)
    if debug:
        _print_json(record.model_dump(mode="json"))
    elif as_json:
        _print_json(record.public())
    else:
        typer.echo(f"{record.id} {record.status.value} progress={record.progress}")


@app.command("wait")
def wait_command(
    job_id: str,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900,
    as_json: Annotated[bool, typer.Option("--json", help="Print the public job object.")] = False,
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
    except (InvalidRequest, InvalidConfiguration) as e:
        _die(str(e))
    except VideoqueueError as e:
        _die(str(e), 1)
    _print_json(answer) if as_json else typer.echo(answer.get("id"))


def _read_requests(source: str) -> list[Any]:
    """Requests from JSON Lines (one per line) or one JSON array."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            _die(f"{source}: not a valid JSON array: {e}")
        return list(data)
    requests = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            requests.append(json.loads(line))
        except json.JSONDecodeError as e:
            _die(f"{source}, line {number}: not valid JSON: {e}")
    return requests


@app.command()
def batch(
    file: Annotated[
        str, typer.Argument(help="JSON Lines (a request per line) or a JSON array; - for stdin.")
    ],
    webhook_url: Annotated[
        str | None, typer.Option(help="Each job's webhook, unless it names its own.")
    ] = None,
    batch_webhook_url: Annotated[
        str | None, typer.Option(help="Receives batch.completed once.")
    ] = None,
    batch_id: Annotated[
        str | None,
        typer.Option(help="Your id for the batch: running the command again resumes it."),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help='Who the batch and its jobs belong to ("default").')
    ] = None,
    wait_: Annotated[
        bool, typer.Option("--wait", help="Show progress until every job ends.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many s.")] = 86400,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Queue many jobs as one batch and print the batch id."""
    requests = _read_requests(file)
    if not requests:
        _die(f"{file}: no requests")
    try:
        queued = enqueue_batch(
            requests,
            batch_id=batch_id,
            webhook_url=webhook_url,
            batch_webhook_url=batch_webhook_url,
            tenant=tenant,
        )
    except InvalidRequest as e:
        _die(str(e))
    except BudgetExceeded as e:
        _die(str(e), 1)
    if not wait_:
        _print_json({"id": queued}) if as_json else typer.echo(queued)
        return
    err.print(f"batch {queued}: {len(requests)} requests")
    record = _follow(queued, timeout)
    if as_json:
        _print_json(record.public())
    else:
        _summary(record)
    if record.failed or not record.done:
        raise typer.Exit(1)


def _follow(batch_id: str, timeout: float) -> BatchRecord:
    """A live progress bar (done, failed, in flight, rate, ETA) until the batch ends."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )  # fmt: skip

    record = get_batch(batch_id)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}  in flight {task.fields[in_flight]}"
                   "  {task.fields[rate]:.1f} jobs/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err) as progress:
        bar = progress.add_task("jobs", total=record.total, failed=0, in_flight=0, rate=0.0)
        while True:
            record = store_batch = get_batch(batch_id)
            in_flight = sum(
                store_batch.counts.get(s.value, 0) for s in ACTIVE if s.value != "queued"
            )
            rate = record.ended / max(time.monotonic() - started, 1e-6)
            progress.update(bar, completed=record.ended, failed=record.failed,
                            in_flight=in_flight, rate=rate)  # fmt: skip
            if record.done or time.monotonic() > deadline:
                return record
            time.sleep(0.5)


def _summary(record: BatchRecord) -> None:
    from rich.table import Table

    table = Table(title=f"batch {record.id}")
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for status, count in sorted(record.counts.items()):
        table.add_row(status, str(count))
    table.add_row("[bold]total", str(record.total))
    out.print(table)
    if record.deduplicated:
        out.print(f"{len(record.deduplicated)} requests matched earlier jobs (idempotency_key)")
    if not record.done:
        err.print("[yellow]timed out before every job ended[/yellow]")


@app.command("batch-status")
def batch_status(
    batch_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record.")] = False,
) -> None:
    """Show a batch: counts by status, times, job ids."""
    try:
        record = get_batch(batch_id)
    except JobNotFound:
        _die(f"no batch with id {batch_id!r}", 1)
    if as_json:
        _print_json(record.public())
    else:
        _summary(record)


@app.command("cancel-batch")
def cancel_batch_command(batch_id: str) -> None:
    """Cancel every job of a batch that has not ended."""
    try:
        record = cancel_batch(batch_id)
    except JobNotFound:
        _die(f"no batch with id {batch_id!r}", 1)
    typer.echo(f"{record.id} cancelled; {record.counts}")
