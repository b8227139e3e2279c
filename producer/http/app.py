"""The ASGI app of `videoqueue serve`: the routes, the error answers and the health checks.

Stateless: everything it knows is in Redis (and the MP4s in S3), so any number of replicas
serve behind any balancer. It calls the producer's verbs and never runs a step itself.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from producer.core import redis_client
from producer.core.errors import (
    ApiError,
    BudgetExceeded,
    InvalidRequest,
    JobNotFound,
    NotEnoughReplicas,
)
from producer.core.settings import Settings, get_settings
from producer.http import batches, callbacks, characters, console, usage, videos
from producer.http.calls import in_thread, with_redis_timeouts
from producer.http.content import Bucket
from producer.http.openapi import ERRORS

log = logging.getLogger("videoqueue.http")
# How long /readyz waits for Redis: a balancer's check wants a quick no.
READY_TIMEOUT_S = 2.0
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The HTTP service for these settings (the environment's by default)."""
    s = with_redis_timeouts(settings or get_settings())
    app = FastAPI(
        title="videoqueue",
        version="1",
        summary="Durable video generation jobs: the router's API and OpenAI's Videos API.",
    )
    app.state.settings = s
    app.state.bucket = Bucket(s)
    app.state.ready_redis = redis_client.client(
        s, socket_timeout=READY_TIMEOUT_S, socket_connect_timeout=READY_TIMEOUT_S
    )
    app.include_router(videos.router)
    app.include_router(batches.router)
    app.include_router(characters.router)
    app.include_router(usage.router)
    console.mount(app)  # the web console at /console (producer/http/console/)
    app.include_router(callbacks.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    app.add_api_route("/readyz", readyz, methods=["GET"], tags=["health"],
                      responses={503: ERRORS[503]})  # fmt: skip
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(BudgetExceeded, _budget_exceeded)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)
    app.add_exception_handler(NotEnoughReplicas, _redis_refused)
    app.add_exception_handler(Exception, _internal_error)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document without the 422 it adds to every route with parameters: invalid
    input is a 400 here, in the error shape every route documents."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        for path in document["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema


async def healthz() -> dict[str, bool]:
    """The process answers."""
    return {"ok": True}


async def readyz(request: Request) -> Any:
    """Redis answers: ready to take requests (503 otherwise)."""
    try:
        await in_thread(request.app.state.ready_redis.ping)
    except redis.RedisError:
        return _redis_unavailable().response()
    return {"ok": True}


def _redis_unavailable(why: str = "is unreachable") -> ApiError:
    return ApiError(
        503, f"the job store (Redis) {why}; try again shortly",
        code="redis_unavailable", type_="server_error", headers={"Retry-After": "1"},
    )  # fmt: skip


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    response: Response = exc.response()
    return response


async def _invalid_request(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    response: Response = videos.invalid_request(exc).response()
    return response


async def _budget_exceeded(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BudgetExceeded)
    # 402 Payment Required, in OpenAI's error shape; the facts beside it, as numbers.
    error = ApiError(402, str(exc), code="budget_exceeded", type_="insufficient_quota",
                     extra={"budget": exc.facts()})  # fmt: skip
    response: Response = error.response()
    return response


async def _not_found(_request: Request, exc: Exception) -> Response:
    response: Response = ApiError(404, str(exc), code="not_found").response()
    return response


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ())]
    # ("query", "limit") -> "limit"; the part says where, the rest names the field.
    param = ".".join(loc[1:]) or None
    message = f"{param}: {first.get('msg', 'invalid')}" if param else "invalid request"
    response: Response = ApiError(400, message, code="invalid_value", param=param).response()
    return response


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Starlette's own 404/405 are plain text; every answer of ours is OpenAI's error object.
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    error = ApiError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {}))
    response: Response = error.response()
    return response


async def _redis_down(_request: Request, exc: Exception) -> Response:
    log.warning("redis unreachable: %s", type(exc).__name__)
    response: Response = _redis_unavailable().response()
    return response


async def _redis_refused(_request: Request, exc: Exception) -> Response:
    log.warning("redis refused a write: %s", exc)
    why = "refuses writes: its primary has too few replicas in sync"
    response: Response = _redis_unavailable(why).response()
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The trace goes to the log (never the answer): the caller gets a plain 500.
    log.error("unexpected error on %s %s", request.method, _path(request), exc_info=exc)
    return JSONResponse(
        {"error": {"message": "internal error", "type": "server_error",
                   "code": "internal_error", "param": None}},
        status_code=500,
    )  # fmt: skip


def _path(request: Request) -> str:
    # Without its query (a signed video URL's signature is a credential), nor a callback
    # URL's token (as much of one).
    return _CALLBACK_TOKEN.sub(r"\1[redacted]", request.url.path)


# The signature of a video URL, and a callback URL's token, as uvicorn's access log would
# print them.
_SIGNED = re.compile(r"(signature=)[^&\s\"]+")
_CALLBACK_TOKEN = re.compile(r"(/callbacks/[^/\s]+/)[^/\s?\"]+")


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, its access log with signatures blanked (in every
    worker process uvicorn starts)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_signatures"] = {"()": RedactSignatures}
    config["handlers"]["access"]["filters"] = ["redact_signatures"]
    return config


class RedactSignatures(logging.Filter):
    """Blanks video URLs' signatures in uvicorn's access log: a signed URL is a credential
    until it expires."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _CALLBACK_TOKEN.sub(r"\1[redacted]", _SIGNED.sub(r"\1[redacted]", a))
                if isinstance(a, str)
                else a
                for a in record.args
            )
        return True
