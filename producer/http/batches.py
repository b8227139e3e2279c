"""The batch routes: enqueue_batch over HTTP, with its guarantees (all or nothing, never half
a batch, a retry with the same batch_id resumes it)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse

from producer.batches import cancel_batch, enqueue_batch, get_batch
from producer.core.errors import ApiError, InvalidRequest, JobNotFound
from producer.core.keys import Principal
from producer.core.records import BatchRecord
from producer.core.settings import Settings
from producer.http.auth import check_owner, principal
from producer.http.bodies import read_body, read_json, unflatten
from producer.http.calls import in_thread
from producer.http.openapi import ERRORS
from producer.http.shapes import Batch, batch_object, video_request
from producer.http.videos import invalid_request

router = APIRouter()
Caller = Annotated[Principal, Depends(principal)]
JSON_LINES = ("application/jsonl", "application/x-ndjson", "application/json-lines",
              "application/x-jsonlines")  # fmt: skip
BATCH_OPTIONS = ("batch_id", "webhook_url", "batch_webhook_url", "metadata")

_REQUEST_ITEM: dict[str, Any] = {
    "type": "object",
    "description": "A create body, as POST /v1/videos takes it as JSON.",
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "requests": {"type": "array", "items": _REQUEST_ITEM, "minItems": 1},
                        "batch_id": {"type": "string", "description": "Yours: a retry resumes."},
                        "webhook_url": {"type": "string"},
                        "batch_webhook_url": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    },  # fmt: skip
                    "required": ["requests"],
                    "additionalProperties": False,
                }
            },
            "application/jsonl": {
                "schema": {
                    "type": "string",
                    "description": "One create body per line; the other fields as query "
                    "parameters (batch_id, webhook_url, batch_webhook_url, metadata[key]).",
                }
            },
        },
    }
}


@router.post(
    "/v1/batches",
    response_model=Batch,
    responses=ERRORS,
    openapi_extra=_BATCH_BODY,
    tags=["batches"],
    summary="Enqueue many videos at once: all of them, or none",
)
async def create_batch(request: Request, who: Caller) -> Any:
    settings: Settings = request.app.state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in JSON_LINES:
        raw = await read_body(request, settings.http_max_batch_bytes)
        items = _lines(raw)
        options = _query_options(request)
    else:
        body = await read_json(request, settings.http_max_batch_bytes)
        if unknown := sorted(set(body) - {"requests", *BATCH_OPTIONS}):
            raise ApiError(400, f"unknown field {unknown[0]!r} of a batch", code="invalid_value",
                           param=unknown[0])  # fmt: skip
        listed = body.get("requests")
        if not isinstance(listed, list) or not listed:
            raise ApiError(400, "requests must be a list of at least one create body",
                           code="invalid_value", param="requests")  # fmt: skip
        items, options = listed, {k: body[k] for k in BATCH_OPTIONS if k in body}
    for name in ("batch_id", "webhook_url", "batch_webhook_url"):
        if options.get(name) is not None and not isinstance(options[name], str):
            raise ApiError(400, f"{name} must be a string", code="invalid_value", param=name)
    requests = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"requests[{index}] must be a JSON object",
                           code="invalid_value", param=f"requests[{index}]")  # fmt: skip
        try:
            requests.append(video_request(item)[0])
        except ApiError as e:
            e.param = f"requests[{index}].{e.param}"
            raise
    try:
        batch_id = await in_thread(
            lambda: enqueue_batch(requests, tenant=who.tenant, settings=settings, **options)
        )
    except InvalidRequest as e:
        raise invalid_request(e) from None
    return await _answer(request, batch_id, who)


@router.get("/v1/batches/{batch_id}", response_model=Batch, responses=ERRORS, tags=["batches"])
async def retrieve_batch(request: Request, batch_id: str, who: Caller) -> Any:
    return await _answer(request, batch_id, who)


@router.post(
    "/v1/batches/{batch_id}/cancel", response_model=Batch, responses=ERRORS, tags=["batches"]
)
async def cancel_batch_route(request: Request, batch_id: str, who: Caller) -> Any:
    settings: Settings = request.app.state.settings
    await _owned(request, batch_id, who)
    try:
        batch = await in_thread(lambda: cancel_batch(batch_id, settings=settings))
    except JobNotFound:
        raise _no_batch(batch_id) from None
    return JSONResponse(batch_object(batch))


async def _answer(request: Request, batch_id: str, who: Principal) -> JSONResponse:
    return JSONResponse(batch_object(await _owned(request, batch_id, who)))


async def _owned(request: Request, batch_id: str, who: Principal) -> BatchRecord:
    settings: Settings = request.app.state.settings
    try:
        batch = await in_thread(lambda: get_batch(batch_id, settings=settings))
        check_owner(batch.tenant, who, batch_id)
    except JobNotFound:
        raise _no_batch(batch_id) from None
    return batch


def _no_batch(batch_id: str) -> ApiError:
    return ApiError(404, f"no batch with id {batch_id!r}", code="not_found", param="batch_id")


def _lines(raw: bytes) -> list[Any]:
    items = []
    for number, line in enumerate(raw.splitlines()):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as e:
            raise ApiError(400, f"line {number + 1} is not JSON: {e}", code="invalid_json",
                           param=f"requests[{len(items)}]") from None  # fmt: skip
    if not items:
        raise ApiError(400, "the body holds no requests (one JSON object per line)",
                       code="invalid_value", param="requests")  # fmt: skip
    return items


def _query_options(request: Request) -> dict[str, Any]:
    options = unflatten(list(request.query_params.multi_items()))
    if unknown := sorted(set(options) - set(BATCH_OPTIONS)):
        raise ApiError(400, f"unknown query parameter {unknown[0]!r} of a batch",
                       code="invalid_value", param=unknown[0])  # fmt: skip
    if isinstance(options.get("metadata"), str):
        try:
            options["metadata"] = json.loads(options["metadata"])
        except ValueError:
            raise ApiError(400, "metadata must be a JSON object, or metadata[key]=value",
                           code="invalid_value", param="metadata") from None  # fmt: skip
    return options
