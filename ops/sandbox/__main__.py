"""``python -m ops.sandbox``: the sandbox command without the rest of the videoqueue CLI."""

import typer

from .cli import sandbox

typer.run(sandbox)
