"""The web console (/console): server-rendered pages over the job store, for people.

`mount(app)` adds its routes, its static files and its error pages to the HTTP service.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from producer.http.console import routes


def mount(app: FastAPI) -> None:
    """Serve the console on app under /console."""
    app.include_router(routes.router)
    app.mount(
        "/console/static", StaticFiles(directory=routes.HERE / "static"), name="console-static"
    )
    app.add_exception_handler(routes.SignInRequired, routes.sign_in_redirect)
    app.add_exception_handler(routes.CsrfRefused, routes.csrf_refused)
    app.add_exception_handler(routes.Missing, routes.missing)
