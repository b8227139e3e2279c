"""`python -m ops` runs the `videoqueue` command."""

from ops.cli import app

app()
