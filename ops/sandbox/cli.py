"""``videoqueue sandbox``: serve the sandbox provider in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from ops.serve import SANDBOX_HTTP

from .config import SandboxConfig
from .service import Sandbox


def sandbox(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8300,
    api_key: Annotated[
        str | None, typer.Option(help="The bearer key clients must send (default: sk-sandbox).")
    ] = None,
    flavor: Annotated[
        str | None, typer.Option(help="Response shapes: router | openai (default: router).")
    ] = None,
    dialect: Annotated[
        str | None,
        typer.Option(
            help="The API dialect spoken: router | openai (these set the flavor too) | replicate"
            " | runway | kling | luma | seedance | wan | openrouter | minimax | veo | fal."
        ),
    ] = None,
    routes: Annotated[
        str | None,
        typer.Option(help="all | documented (only the seed's documented routes; default all)."),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="A JSON or TOML file of knobs; flags given here win over it."),
    ] = None,
    fast: Annotated[
        bool | None, typer.Option("--fast/--no-fast", help="Finish tasks in well under 1 s.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice.")] = None,
    time_scale: Annotated[
        float | None, typer.Option(help="Multiply every generation time.")
    ] = None,
    rpm_limit: Annotated[int | None, typer.Option(help="Requests per minute per key.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Unfinished generations per key.")
    ] = None,
    error_rate: Annotated[float | None, typer.Option(help="Fraction answered 5xx.")] = None,
    slow_rate: Annotated[float | None, typer.Option(help="Fraction answered slowly.")] = None,
    slow_s: Annotated[float | None, typer.Option(help="Delay of a slow answer.")] = None,
    hang_rate: Annotated[float | None, typer.Option(help="Fraction that hang.")] = None,
    hang_s: Annotated[float | None, typer.Option(help="How long a hang lasts.")] = None,
    lost_create_rate: Annotated[
        float | None, typer.Option(help="Creates that make the task but answer 502.")
    ] = None,
    fail_rate: Annotated[float | None, typer.Option(help="Tasks that end failed.")] = None,
    stuck_rate: Annotated[float | None, typer.Option(help="Tasks queued forever.")] = None,
    url_ttl_s: Annotated[float | None, typer.Option(help="File URLs expire after this.")] = None,
    file_outage_s: Annotated[
        float | None, typer.Option(help="Downloads refused this long from the start.")
    ] = None,
    file_outage: Annotated[
        str | None, typer.Option(help="How downloads are refused then: 503 | reset | timeout.")
    ] = None,
    truncate_rate: Annotated[float | None, typer.Option(help="Downloads cut short.")] = None,
    broken_moov_rate: Annotated[
        float | None, typer.Option(help="Downloads with a corrupt moov box.")
    ] = None,
    garbled_frames_rate: Annotated[
        float | None, typer.Option(help="Downloads whose frames are garbage (moov intact).")
    ] = None,
    short_content_length_rate: Annotated[
        float | None, typer.Option(help="Downloads whose Content-Length is half the body.")
    ] = None,
    retry_after: Annotated[
        str | None, typer.Option(help="Retry-After sent verbatim on 429, 5xx and status.")
    ] = None,
    html_rate: Annotated[
        float | None, typer.Option(help="Status queries answered 200 with an HTML page.")
    ] = None,
    non_json_rate: Annotated[
        float | None, typer.Option(help="Status queries answered 200 with truncated JSON.")
    ] = None,
    missing_status_rate: Annotated[
        float | None, typer.Option(help="Status answers without their status field.")
    ] = None,
    nan_progress_rate: Annotated[
        float | None, typer.Option(help='Status answers with "progress": NaN.')
    ] = None,
    numeric_error_code: Annotated[
        bool | None,
        typer.Option("--numeric-error-code/--no-numeric-error-code", help="Numeric error codes."),
    ] = None,
    url_as_list: Annotated[
        bool | None,
        typer.Option("--url-as-list/--no-url-as-list", help="File URLs as a list of one string."),
    ] = None,
    cdn_base_url: Annotated[
        str | None, typer.Option(help="Redirect file URLs (302) to this origin.")
    ] = None,
    public_base_url: Annotated[
        str | None, typer.Option(help="Base of file URLs (default: the Host header).")
    ] = None,
    vocabulary: Annotated[
        str | None, typer.Option(help="Status words: standard | alt | upper | novel.")
    ] = None,
    file_padding_bytes: Annotated[
        int | None, typer.Option(help="Extra bytes in each file (a free box).")
    ] = None,
) -> None:
    """Serve the sandbox provider API until interrupted."""
    flags: dict[str, Any] = {
        name: value
        for name, value in locals().items()
        if name not in ("host", "port", "profile") and value is not None
    }
    try:
        config = (
            SandboxConfig.from_file(profile, **flags)
            if profile is not None
            else SandboxConfig(**flags)
        )
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    sb = Sandbox(config)
    typer.echo(
        f"sandbox ({config.dialect} dialect{', fast' if config.fast else ''}) "
        f"on http://{host}:{port}  (stats: http://{host}:{port}/_sandbox/stats)"
    )
    try:
        uvicorn.run(
            sb.app, host=host, port=port, log_level="warning", lifespan="off", **SANDBOX_HTTP
        )
    finally:
        sb.close()
