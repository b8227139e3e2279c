"""The `videoqueue` command: the producer's commands plus the operational ones."""

from __future__ import annotations

from ops.sandbox.cli import sandbox
from producer.cli import app

app.command("sandbox", help="Serve the sandbox provider API (a stand-in for the video API).")(
    sandbox
)

__all__ = ["app"]
