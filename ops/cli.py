"""The `videoqueue` command: the producer's commands plus the operational ones (jobs list,
stats, retry, webhooks dead/replay, keys create/list/revoke, tenants set/show, usage, serve,
dev, doctor, sandbox).

Exit codes, for every command: 0 success; 1 a job failed or was not found, an operation was
refused, a doctor check failed, or Redis or S3 is unreachable (one line says which); 2
invalid input.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ops import admin
from ops.doctor import run_checks
from ops.sandbox.cli import sandbox
from producer.cli import app
from producer.core.errors import InvalidRequest, JobNotFound, KeyNotFound, OperationRefused
from producer.core.keys import SECRET_PREFIX, create_key, list_keys, revoke_key
from producer.core.providers import providers
from producer.core.records import JobRecord, JobStatus
from producer.core.settings import get_settings
from producer.core.store import store
from producer.core.tenant_policies import TenantPolicy, get_policy, list_policies, set_policy

app.command("sandbox", help="Serve the sandbox provider API (a stand-in for the video API).")(
    sandbox
)
jobs_app = typer.Typer(help="Find jobs.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Dead-lettered webhooks.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the HTTP API, by tenant.", no_args_is_help=True)
tenants_app = typer.Typer(
    help="Tenants' fair-share weights, ceilings and budgets.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")

out = Console()
# Never wrapped: an error is one line, whatever the terminal's width.
err = Console(stderr=True, soft_wrap=True)
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _fail(message: str) -> Any:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _since_s(text: str) -> float:
    """Epoch seconds from "30m", "2h", "7d" ago, or an ISO 8601 time."""
    if m := _AGO.match(text.strip()):
        return time.time() - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use 30m, 2h, 7d or an ISO time") from None
    return moment.timestamp()


@jobs_app.command("list")
def jobs_list(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's jobs.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only jobs created since: 30m, 2h, 7d or an ISO time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's jobs.")] = None,
    as_json: AsJson = False,
) -> None:
    """List jobs, newest first (the records' retention bounds how far back)."""
    records = admin.list_jobs(
        get_settings(),
        status=status,
        batch_id=batch,
        since_s=_since_s(since) if since else None,
        limit=limit,
        tenant=tenant,
    )
    if as_json:
        return _print_json([r.public() for r in records])
    table = Table(title=f"{len(records)} jobs")
    for column in ("id", "status", "created", "error"):
        table.add_column(column)
    for r in records:
        error = f"{r.error.code}: {r.error.message[:60]}" if r.error else ""
        table.add_row(r.id, r.status.value, r.created_at, error)
    out.print(table)


@app.command()
def stats(as_json: AsJson = False) -> None:
    """Jobs by status, schedule depth and lateness, in flight and parked, dead letters."""
    from dataclasses import asdict

    from producer.core.stats import read_stats

    settings = get_settings()
    snapshot = read_stats(store(settings), settings)
    if as_json:
        return _print_json(asdict(snapshot))
    jobs = Table(title="jobs")
    jobs.add_column("status")
    jobs.add_column("now", justify="right")
    jobs.add_column("ever ended so", justify="right")
    for status_, n in snapshot.jobs.items():
        jobs.add_row(status_, str(n), str(snapshot.finished.get(status_, "")))
    lanes = Table(title="schedule")
    for column in ("lane", "due", "waiting", "leased", "oldest due (s)"):
        lanes.add_column(column, justify="right" if column != "lane" else "left")
    for lane, d in snapshot.schedule.items():
        lanes.add_row(lane, str(d.due), str(d.waiting), str(d.leased), f"{d.oldest_due_s:.2f}")
    out.print(jobs, lanes)
    cap = snapshot.in_flight_cap if snapshot.in_flight_cap is not None else "none"
    out.print(
        f"account {snapshot.account}: in flight {snapshot.in_flight} (cap {cap}), "
        f"parked {snapshot.parked}; dead letters {snapshot.dead_letters}"
    )
    if snapshot.unknown_statuses:
        words = ", ".join(f"{w!r} x{n}" for w, n in snapshot.unknown_statuses.items())
        out.print(f"unknown provider status words seen: {words}")


@app.command()
def retry(
    job_id: str,
    resubmit: Annotated[
        bool, typer.Option(help="Ask the provider for a new task (a new, billed generation).")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Run a failed job again from its last good step (never a new provider task unless
    --resubmit)."""
    try:
        record = admin.retry_job(get_settings(), job_id, resubmit=resubmit)
    except (JobNotFound, OperationRefused) as e:
        _fail(str(e))
    _report(record, as_json)


def _report(record: JobRecord, as_json: bool) -> None:
    if as_json:
        _print_json(record.public())
    else:
        typer.echo(f"{record.id} {record.status.value}")


@webhooks_app.command("dead")
def webhooks_dead(as_json: AsJson = False) -> None:
    """List dead-lettered webhooks (every delivery attempt failed)."""
    letters = admin.dead_webhooks(get_settings())
    if as_json:
        return _print_json(letters)
    table = Table(title=f"{len(letters)} dead webhooks")
    for column in ("id", "owner", "event", "attempts", "last error", "url"):
        table.add_column(column)
    for e in letters:
        table.add_row(e["id"], str(e.get("owner_id", "")), e.get("event_type", ""),
                      str(e.get("attempts", "")), str(e.get("last_error") or ""),
                      e.get("url", ""))  # fmt: skip
    out.print(table)


@webhooks_app.command("replay")
def webhooks_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="Webhook ids (msg_...).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead-lettered webhook.")] = False,
    as_json: AsJson = False,
) -> None:
    """Deliver dead-lettered webhooks again, with their original webhook-id and body."""
    if bool(ids) == all_:
        raise typer.BadParameter("give webhook ids or --all, not both")
    try:
        results = admin.replay_webhooks(get_settings(), None if all_ else list(ids or []))
    except OperationRefused as e:
        _fail(str(e))
    if as_json:
        _print_json(results)
    else:
        for r in results:
            verdict = "delivered" if r["ok"] else f"failed: {r['error']}"
            typer.echo(f"{r['id']} {verdict}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Whose jobs the key makes and sees.")],
    admin: Annotated[bool, typer.Option("--admin", help="See every tenant's jobs.")] = False,
    as_json: AsJson = False,
) -> None:
    """Make an API key and print its secret (shown this once: only its hash is kept)."""
    try:
        key, secret = create_key(tenant, admin=admin)
    except InvalidRequest as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        return _print_json({**key.model_dump(mode="json"), "key": secret})
    typer.echo(secret)
    err.print(
        f"key {key.id} for tenant {key.tenant}{' (admin)' if key.admin else ''}: "
        "the secret above is shown this once",
        highlight=False,
    )


@keys_app.command("list")
def keys_list(as_json: AsJson = False) -> None:
    """List API keys, revoked ones too (never their secrets)."""
    found = list_keys()
    if as_json:
        return _print_json([k.model_dump(mode="json") for k in found])
    table = Table(title=f"{len(found)} API keys")
    for column in ("id", "tenant", "admin", "prefix", "created", "revoked"):
        table.add_column(column)
    for k in found:
        table.add_row(k.id, k.tenant, "yes" if k.admin else "", f"{k.prefix}…", k.created_at,
                      k.revoked_at or "")  # fmt: skip
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...), not its secret.")],
    as_json: AsJson = False,
) -> None:
    """Revoke an API key: every replica refuses it from its next request."""
    if key_id.startswith(SECRET_PREFIX):
        # Not echoed: a secret pasted here should not land in a terminal log as well.
        err.print("[red]error:[/red] that is a key's secret: give its id (`videoqueue keys list`)")
        raise typer.Exit(2)
    try:
        key = revoke_key(key_id)
    except KeyNotFound as e:
        _fail(str(e))
    if as_json:
        return _print_json(key.model_dump(mode="json"))
    typer.echo(f"{key.id} revoked {key.revoked_at}")


@tenants_app.command("set")
def tenants_set(
    name: Annotated[str, typer.Argument(help="The tenant (as in `keys create --tenant`).")],
    weight: Annotated[
        float | None, typer.Option(help="Its share of scarce provider slots (default 1).")
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Most of its jobs at providers at once, all providers.")
    ] = None,
    reserved: Annotated[
        int | None, typer.Option(help="Slots held back for it while it has due work.")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option(help="What it may spend per --budget-period, in USD.")
    ] = None,
    budget_period: Annotated[
        str | None, typer.Option(help="day, month or total (default total).")
    ] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            metavar="FIELD",
            help="Put a field back to its default (repeatable): --clear budget-usd lifts the "
            "budget, --clear max-in-flight the ceiling.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Set some of a tenant's policy; the fields not given keep their values."""
    given = {
        "weight": weight, "max_in_flight": max_in_flight, "reserved": reserved,
        "budget_usd": budget_usd, "budget_period": budget_period,
    }  # fmt: skip
    changes = {k: v for k, v in given.items() if v is not None}
    try:
        for field in clear or []:
            key = field.replace("-", "_")
            if key not in given:
                raise InvalidRequest.of_field(
                    "--clear",
                    f"no field {field!r}; one of " + ", ".join(k.replace("_", "-") for k in given),
                )
            if key in changes:
                raise InvalidRequest.of_field("--clear", f"{field} is also given a value")
            changes[key] = TenantPolicy.model_fields[key].default
        policy = set_policy(name, changes)
    except InvalidRequest as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    _show_policy(name, policy.model_dump(), as_json)


@tenants_app.command("show")
def tenants_show(
    name: Annotated[
        str | None, typer.Argument(help="The tenant; every tenant with a policy when left out.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Show a tenant's policy (the defaults when none was set)."""
    if name is None:
        views = [v.model_dump() for v in list_policies()]
        if as_json:
            return _print_json(views)
        for view in views:
            _show_policy(view.pop("tenant"), view, False)
        return
    try:
        policy = get_policy(name)
    except InvalidRequest as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    _show_policy(name, policy.model_dump(), as_json)


@app.command()
def usage(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (one JSON object).")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Charges from this UTC day on: 7d, 30d ago or an ISO date or time."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """What tenants spent (charged), hold (reserved) and have left of their budgets, and what
    each provider charged them (the ledger's figures, in USD)."""
    from datetime import UTC

    from producer.usage import usage as usage_of

    when = datetime.fromtimestamp(_since_s(since), UTC) if since else None
    try:
        found = usage_of(tenant=tenant, since=when)
    except InvalidRequest as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    rows = [u.model_dump(mode="json") for u in found]
    if as_json:
        return _print_json(rows[0] if tenant is not None else rows)
    table = Table(title=f"usage{f' since {found[0].since}' if found and since else ''} (USD)")
    for column in ("tenant", "charged", "reserved", "budget", "spent", "remaining", "providers"):
        table.add_column(column)
    for u in found:
        budget = "-" if u.budget_usd is None else f"{u.budget_usd:g}/{u.budget_period}"
        left = "-" if u.remaining_usd is None else f"{u.remaining_usd:g}"
        by = " ".join(f"{k}={v.charged_usd:g}" for k, v in u.providers.items())
        table.add_row(u.tenant, f"{u.charged_usd:g}", f"{u.reserved_usd:g}", budget,
                      f"{u.spent_usd:g}", left, by)  # fmt: skip
    out.print(table)


def _show_policy(name: str, fields: dict[str, Any], as_json: bool) -> None:
    if as_json:
        return _print_json({"tenant": name, **fields})
    shown = " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items())
    typer.echo(f"{name}: {shown}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Server processes (uvicorn's).")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the HTTP API (producer/http/): the router's routes and OpenAI's Videos API, for
    backends in any language, with the same VIDEOQUEUE_* settings as the workers. Stateless:
    run as many as you like behind a balancer."""
    import uvicorn

    from producer.http.app import log_config

    # A bad setting (or providers file) stops here (producer/cli.py), before a request finds it.
    providers(get_settings())
    uvicorn.run(
        "producer.http.app:create_app", factory=True, host=host, port=port, workers=workers,
        log_level=log_level, log_config=log_config(), http="httptools", loop="asyncio",
    )  # fmt: skip


@app.command()
def dev(
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="The API's port (0: a free one).")
    ] = 8080,
    tenant: Annotated[str, typer.Option(help="The tenant of the printed API key.")] = "default",
    host: Annotated[str, typer.Option(help="The address the API listens on.")] = "127.0.0.1",
    workdir: Annotated[Path, typer.Option(help="Logs and S3's data.", file_okay=False)] = Path(
        ".stack/dev"
    ),
    redis_url: Annotated[
        str, typer.Option(help="Use the Redis here, or start one on its port if none answers.")
    ] = "redis://127.0.0.1:6379/0",
) -> None:
    """Run the whole stack here (Redis, S3, the sandbox provider, a worker, the HTTP API, a
    webhook receiver that prints each event) until Ctrl-C; print the URLs, an API key and
    the environment to export."""
    from ops.dev import main as run_dev
    from ops.dev import port_taken
    from producer.core.tenants import check_tenant

    # Checked before anything starts: SeaweedFS and a worker would be started for nothing.
    try:
        check_tenant(tenant)
    except InvalidRequest as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    if port and port_taken(host, port):
        err.print(f"[red]error:[/red] --port: {host}:{port} is taken; choose another, or "
                  "--port 0 for a free one", highlight=False)  # fmt: skip
        raise typer.Exit(2)
    raise typer.Exit(
        run_dev(workdir.resolve(), host=host, port=port, tenant=tenant, redis_url=redis_url)
    )


@app.command()
def doctor(as_json: AsJson = False) -> None:
    """Check Redis, S3, the provider key and the webhook secret; exit 0 only if all pass."""
    checks = run_checks(get_settings())
    if as_json:
        _print_json([c.to_dict() for c in checks])
    else:
        for c in checks:
            if c.ok:
                out.print(f"[green]ok[/green]      {c.name}: {c.detail}", highlight=False)
            else:
                out.print(f"[red]problem[/red] {c.name}: {c.detail}", highlight=False)
                out.print(f"        fix: {c.fix}", highlight=False)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


__all__ = ["app"]
