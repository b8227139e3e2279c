"""Status answers that say 200 and are still wrong, as real providers' (and their CDNs') are.

Each knob is a rate with its own random stream (endless_rate, drip_rate, html_rate,
non_json_rate, missing_status_rate, nan_progress_rate), drawn on every status query. When
several hit the same answer, the client can see only one of an endless body, a dripping one,
HTML and truncated JSON, so the first of endless, drip, html, non_json wins; missing_status
and nan_progress can share an answer.
Only what reaches the wire is counted in stats' faults.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

if TYPE_CHECKING:
    from .service import Sandbox

# What a CDN or captive portal answers when the origin is away: a 200 that is not the API.
ERROR_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>We'll be right back | Edge</title></head>
<body>
<h1>We'll be right back</h1>
<p>The origin server is temporarily unavailable. Please try again in a few minutes.</p>
<p><small>Ray ID: 8c1f0a9e2b7d3f1c &middot; edge-fra-07</small></p>
</body>
</html>
"""


def status_response(sb: Sandbox, body: dict[str, Any], headers: dict[str, str]) -> Response:
    """The answer to a status query of the task rendered as body, malformed as the knobs say.

    Args:
        sb: the sandbox (its config and random streams).
        body: the task as the flavor renders it (modified in place).
        headers: headers of the honest answer, kept on every malformed one.
    """
    state, cfg = sb.state, sb.config
    # Every stream is drawn on every query, so one knob's choices do not depend on another's.
    html = state.roll("html", cfg.html_rate)
    non_json = state.roll("non_json", cfg.non_json_rate)
    missing_status = state.roll("missing_status", cfg.missing_status_rate)
    nan_progress = state.roll("nan_progress", cfg.nan_progress_rate)
    endless = state.roll("endless", cfg.endless_rate)
    drip = state.roll("drip", cfg.drip_rate)
    if endless or drip:
        state.count_in("faults", "endless" if endless else "drip")
        stream = _endless(body) if endless else drip_bytes(_dumps(body).encode())
        return StreamingResponse(stream, media_type="application/json", headers=headers)
    if html:
        state.count_in("faults", "html")
        return HTMLResponse(ERROR_PAGE, headers=headers)
    if non_json:
        state.count_in("faults", "non_json")
        return Response(_truncated(_dumps(body)), media_type="application/json", headers=headers)
    if not (missing_status or nan_progress):
        return JSONResponse(body, headers=headers)
    if missing_status:
        state.count_in("faults", "missing_status")
        body.pop("status", None)
    if nan_progress:
        state.count_in("faults", "nan_progress")
        body["progress"] = float("nan")
    return Response(_dumps(body), media_type="application/json", headers=headers)


async def _endless(body: dict[str, Any]) -> AsyncIterator[bytes]:
    """The task's JSON with a string field that never closes (until the client hangs up)."""
    yield _dumps(body)[:-1].encode() + b',"padding":"'
    while True:
        yield b"x" * 65536
        await asyncio.sleep(0)


async def drip_bytes(data: bytes) -> AsyncIterator[bytes]:
    """data a byte every half second: within any per-read timeout, long in all."""
    for i in range(len(data)):
        yield data[i : i + 1]
        await asyncio.sleep(0.5)


def _dumps(body: dict[str, Any]) -> str:
    # Starlette's JSONResponse output, except that NaN is written as Python writes it, not refused.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def _truncated(text: str) -> str:
    """JSON cut off inside the status key, as a dropped proxy connection leaves it."""
    at = text.find('"status"')
    return text[: at + len('"stat')] if at > 0 else text[: len(text) // 2]
