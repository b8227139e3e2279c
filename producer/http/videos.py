"""The video routes: create (the router's JSON, OpenAI's form), read, list, cancel, download."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import JSONResponse, Response

from producer.core.errors import ApiError, InvalidRequest, JobNotFound
from producer.core.keys import Principal
from producer.core.records import TERMINAL, JobRecord, JobStatus, Output, Poster
from producer.core.settings import Settings
from producer.http.auth import check_owner, identify, principal
from producer.http.bodies import is_form, read_form, read_json
from producer.http.calls import in_thread, on_loop
from producer.http.content import content_url, signature_holds
from producer.http.openapi import ERRORS, create_body
from producer.http.shapes import Video, VideoDeleted, VideoList, video_object, video_request
from producer.jobs import cancel, create_job, get, list_jobs

router = APIRouter(tags=["videos"])
Caller = Annotated[Principal, Depends(principal)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Same as the body's idempotency_key: a repeat answers the first job.",
    ),
]
MAX_PAGE = 100
POLL_AFTER = "openai-poll-after-ms"
MIN_POLL_AFTER_MS = 500
MP4 = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}
JPEG = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}


async def create_video(
    request: Request, who: Caller, idempotency_key: IdempotencyKey = None
) -> Any:
    """Create a video: the router's JSON, or OpenAI's multipart form."""
    return await _create(request, who, idempotency_key)


# One handler, two routes: the router's unified format differs only in taking aspect_ratio,
# which both take; only /v1/videos takes OpenAI's form.
for _path, _form, _summary in (
    ("/v1/videos", True, "Create a video (router JSON, or OpenAI's multipart form)"),
    ("/v1/video/create", False, "Create a video (the router's unified format: aspect_ratio)"),
):
    router.add_api_route(
        _path, create_video, methods=["POST"], response_model=Video, responses=ERRORS,
        openapi_extra=create_body(form=_form), summary=_summary,
    )  # fmt: skip


async def _create(request: Request, who: Principal, idempotency_key: str | None) -> Response:
    settings: Settings = request.app.state.settings
    form = is_form(request)
    if form:
        try:
            body = await read_form(request, settings.http_max_body_bytes)
        except ApiError as e:
            if e.status == 413:  # most likely an input_reference file: say what to do instead
                e.message += "; input_reference files are not supported yet: pass image_url"
                e.param = "input_reference"
            raise
    else:
        body = await read_json(request, settings.http_max_body_bytes)
    fields, names = video_request(body, idempotency_key=idempotency_key, form=form)
    try:
        record = await on_loop(create_job, fields, tenant=who.tenant, settings=settings)
    except InvalidRequest as e:
        raise invalid_request(e, names) from None
    return _video(request, record)


def invalid_request(e: InvalidRequest, names: dict[str, str] | None = None) -> ApiError:
    """An InvalidRequest as a 400 naming the caller's field (its first problem's)."""
    field = e.errors[0].get("field") if e.errors else None
    if field is not None and "index" in e.errors[0]:
        field = f"requests[{e.errors[0]['index']}].{field}"
    elif field is not None:
        head, _, rest = str(field).partition(".")
        field = (names or {}).get(head, head) + (f".{rest}" if rest else "")
    if field == "(request)":
        field = None
    message = str(e)
    for ours, theirs in (names or {}).items():
        message = message.replace(f"{ours}:", f"{theirs}:")
    return ApiError(400, message, code="invalid_request", param=field)


@router.get("/v1/videos/{video_id}", response_model=Video, responses=ERRORS)
async def retrieve_video(request: Request, video_id: str, who: Caller) -> Any:
    record = await _owned(request, video_id, who)
    return _video(request, record)


@router.get("/v1/videos", response_model=VideoList, responses=ERRORS)
async def list_videos(
    request: Request,
    who: Caller,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Videos per page.")] = 20,
    after: Annotated[
        str | None, Query(max_length=200, description="The last id of the previous page.")
    ] = None,
    order: Annotated[str, Query(pattern="^desc$", description="Newest first only.")] = "desc",
) -> Any:
    settings: Settings = request.app.state.settings
    tenant = None if who.admin else who.tenant
    records, has_more = await on_loop(
        lambda: list_jobs(tenant=tenant, limit=limit, after=after, settings=settings)
    )
    data = [_video_data(request, r) for r in records]
    return JSONResponse({
        "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None, "has_more": has_more,
    })  # fmt: skip


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=ERRORS)
async def delete_video(request: Request, video_id: str, who: Caller) -> Any:
    """Cancel the job. One that completed or failed is kept (409): its video stays
    downloadable until it expires."""
    settings: Settings = request.app.state.settings
    record = await _owned(request, video_id, who)
    if record.status in TERMINAL and record.status is not JobStatus.CANCELLED:
        raise _ended(video_id, record)
    record = await on_loop(lambda: cancel(video_id, settings=settings))
    if record.status is not JobStatus.CANCELLED:
        raise _ended(video_id, record)  # it ended while we asked
    return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})


def _ended(video_id: str, record: JobRecord) -> ApiError:
    return ApiError(
        409,
        f"video {video_id} has already {record.status.value}; only an unfinished one can be "
        "cancelled (it is kept until its expires_at)",
        code="video_already_ended",
    )


@router.get(
    "/v1/videos/{video_id}/content",
    responses={
        **ERRORS,
        200: {"content": {**MP4, **JPEG}, "description": "The MP4, or its poster frame."},
        206: {"content": {**MP4, **JPEG}, "description": "The asked-for Range of it."},
        416: {**ERRORS[400], "description": "A Range outside it."},
    },
    response_class=Response,
    summary="Download the MP4 or its poster frame (the bearer key, or video.url's signature)",
)
async def download_video(
    request: Request,
    video_id: str,
    variant: Annotated[
        str,
        Query(
            description="video (the MP4), thumbnail (its poster frame, a JPEG; 404 when none "
            "could be made) or spritesheet (not kept: 404)"
        ),
    ] = "video",
    expires: Annotated[str | None, Query(description="From a signed video.url.")] = None,
    signature: Annotated[str | None, Query(description="From a signed video.url.")] = None,
) -> Any:
    settings: Settings = request.app.state.settings
    if signature_holds(settings, video_id, expires, signature, time.time()):
        record = await _record(request, video_id)
    elif (secret := _bearer(request)) is None and (expires or signature):
        raise ApiError(403, "this video URL's signature is invalid or expired: retrieve the "
                       "video again for a fresh url", code="invalid_signature")  # fmt: skip
    else:
        record = await _owned(request, video_id, await identify(request, secret))
    if variant not in ("video", "thumbnail", "spritesheet"):
        raise ApiError(400, f"unknown variant {variant!r}; use video or thumbnail",
                       code="invalid_value", param="variant")  # fmt: skip
    if variant == "spritesheet":
        raise ApiError(404, "variant 'spritesheet' is not available: only the video and its "
                       "thumbnail are kept", code="variant_not_available",
                       param="variant")  # fmt: skip
    if record.status is not JobStatus.COMPLETED or record.output is None:
        raise ApiError(
            409,
            f"video {video_id} is {record.status.value}, not completed: retrieve it until its "
            "status is completed",
            code="video_not_ready",
        )
    stored: Output | Poster = record.output
    if variant == "thumbnail":
        if record.output.poster is None:  # best effort: the video completed without one
            why = record.output.poster_error or "it was stored before posters were made"
            raise ApiError(404, f"video {video_id} has no thumbnail: {why}",
                           code="variant_not_available", param="variant")  # fmt: skip
        stored = record.output.poster
    bucket = request.app.state.bucket
    return await in_thread(bucket.open, stored, request.headers.get("range"))


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


async def _record(request: Request, video_id: str) -> JobRecord:
    settings: Settings = request.app.state.settings
    try:
        return await on_loop(lambda: get(video_id, settings=settings))
    except JobNotFound:
        raise no_video(video_id) from None


async def _owned(request: Request, video_id: str, who: Principal) -> JobRecord:
    record = await _record(request, video_id)
    try:
        check_owner(record.tenant, who, video_id)
    except JobNotFound:
        raise no_video(video_id) from None
    return record


def no_video(video_id: str) -> ApiError:
    """The one 404 for a video that is not there, or not the caller's."""
    return ApiError(404, f"no video with id {video_id!r}", code="not_found", param="video_id")


def _video_data(request: Request, record: JobRecord) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    url = content_url(settings, str(request.base_url), record.id, time.time())
    return video_object(record, content_url=url, record_ttl_s=settings.record_ttl_s)


def _video(request: Request, record: JobRecord) -> JSONResponse:
    headers = {}
    if not record.terminal:
        # OpenAI's SDK waits this long before its next look (else 1 s): asking more often than
        # the workers ask the provider (poll_first_s and up) learns nothing new.
        settings: Settings = request.app.state.settings
        headers[POLL_AFTER] = str(max(MIN_POLL_AFTER_MS, int(settings.poll_first_s * 1000)))
    return JSONResponse(_video_data(request, record), headers=headers)
