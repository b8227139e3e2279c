"""The HTTP API's objects: a job as OpenAI's Video object extended with the router's `video`
block, pages of them, and the translation of a create body (the router's JSON, or OpenAI's
form) into videoqueue's request. Pure: no I/O here."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from producer.core.errors import ApiError
from producer.core.records import BatchRecord, JobRecord, JobStatus
from producer.core.requests import ASPECT_RATIOS
from producer.http.bodies import Upload

# Our statuses in OpenAI's words: its SDK polls while `queued` or `in_progress` and returns on
# anything else, and a router client waits for `completed` or `failed`. A cancelled job is
# `failed` with the error code "cancelled", so that both kinds of client stop waiting.
OPENAI_STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.SUBMITTED: "in_progress",
    JobStatus.PROCESSING: "in_progress",
    JobStatus.FINALIZING: "in_progress",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "failed",
}
CANCELLED_ERROR = {"code": "cancelled", "message": "the job was cancelled"}
# A form can carry these only as JSON text (or bracketed names, which bodies.unflatten reads).
_JSON_IN_FORMS = ("storyboard", "metadata", "extra")
# A form's fields are text; these are numbers in the request (validated strictly there).
_NUMBERS_IN_FORMS: dict[str, Callable[[str], Any]] = {"priority": int, "deadline_s": float}
_DIGITS = re.compile(r"[0-9]{1,9}")


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    code: str | None
    param: str | None = Field(description="The request field at fault, if one is.")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {...}}`."""

    error: ErrorDetail


class VideoFile(BaseModel):
    """The router's `video` block: where the finished MP4 is, and what it is."""

    url: str = Field(description="Our content route (signed when the service has a URL secret).")
    duration: float | None
    width: int | None
    height: int | None


class VideoError(BaseModel):
    """Why the job failed (code "cancelled" for a cancelled job)."""

    code: str
    message: str


class Video(BaseModel):
    """A job, as OpenAI's Video object plus the router's `video` block when completed."""

    id: str = Field(description="The job id.")
    object: Literal["video"] = "video"
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    model: str
    seconds: str | None = Field(description='The duration asked for, as OpenAI writes it ("4").')
    size: str | None = Field(description='"WxH": the video made, else the one asked for.')
    prompt: str | None
    created_at: int = Field(description="Unix seconds.")
    completed_at: int | None = Field(description="Unix seconds, once it ended.")
    expires_at: int | None = Field(
        description="Unix seconds: when its record and download expire, once it ended."
    )
    error: VideoError | None
    remixed_from_video_id: str | None = None
    video: VideoFile | None = Field(description="The router's block, once completed.")
    metadata: dict[str, str]
    batch_id: str | None


class Character(BaseModel):
    """A character, as the provider answers it (its id goes into a request's `characters`)."""

    model_config = ConfigDict(extra="allow")

    id: str


class VideoList(BaseModel):
    """A page of videos, newest first (or oldest, `order=asc`); the next page is
    `?after=<last_id>` in the same order."""

    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    """DELETE's answer: the job was cancelled (or had been)."""

    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


class Batch(BaseModel):
    """A batch, as `get_batch` shows it."""

    id: str
    object: Literal["batch"] = "batch"
    state: str
    total: int
    counts: dict[str, int]
    ended: int
    created_at: str
    finished_at: str | None
    cancelled: bool
    job_ids: list[str]
    deduplicated: dict[str, str]
    metadata: dict[str, str]
    usage: dict[str, float]


def unix_s(iso: str | None) -> int | None:
    """An ISO 8601 time as whole Unix seconds."""
    if iso is None:
        return None
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def video_object(record: JobRecord, *, content_url: str, record_ttl_s: float) -> dict[str, Any]:
    """The job as the API answers it (the `Video` schema).

    Args:
        content_url: where its MP4 is fetched (used once it completed).
        record_ttl_s: how long an ended job's record (and so its download) is kept.
    """
    request, output = record.request, record.output
    status = OPENAI_STATUS[record.status]
    completed = record.status is JobStatus.COMPLETED
    duration = request.get("duration")
    if duration is None and request.get("storyboard"):
        duration = sum(int(scene["duration"]) for scene in request["storyboard"])
    size = request.get("size")
    if output is not None and output.width and output.height:
        size = f"{output.width}x{output.height}"
    elif size is None and (ratio := request.get("aspect_ratio")) in ASPECT_RATIOS:
        size = "{}x{}".format(*ASPECT_RATIOS[ratio])
    error: dict[str, str] | None = None
    if record.status is JobStatus.CANCELLED:
        error = CANCELLED_ERROR
    elif record.error is not None:
        error = {"code": record.error.code, "message": record.error.message}
    ended_at = unix_s(record.finished_at) if record.terminal else None
    # Ends at 100 only when the MP4 is ours: a provider's 100 still has the copy ahead.
    progress = 100 if completed else min(max(record.progress or 0, 0), 99)
    video = None
    if completed and output is not None:
        video = {
            "url": content_url,
            "duration": output.duration_s if output.duration_s is not None else duration,
            "width": output.width,
            "height": output.height,
        }
    return {
        "id": record.id,
        "object": "video",
        "status": status,
        "progress": progress,
        "model": request.get("model", "sora"),
        "seconds": str(duration) if duration is not None else None,
        "size": size,
        "prompt": request.get("prompt"),
        "created_at": unix_s(record.created_at),
        "completed_at": ended_at,
        "expires_at": ended_at + int(record_ttl_s) if ended_at is not None else None,
        "error": error,
        "remixed_from_video_id": None,
        "video": video,
        "metadata": record.metadata,
        "batch_id": record.batch_id,
    }


def batch_object(batch: BatchRecord) -> dict[str, Any]:
    """The batch as the API answers it (the `Batch` schema)."""
    data = batch.public()
    data.pop("webhook", None)  # its delivery state, which changes per attempt
    data.pop("tenant", None)
    return {"id": data.pop("id"), "object": "batch", **data}


def video_request(
    body: dict[str, Any], *, idempotency_key: str | None = None, form: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """A create body, in the router's JSON or OpenAI's fields, as videoqueue's request.

    OpenAI's `seconds` ("4") is our `duration`; its `input_reference` as an image URL
    (`{"image_url": ...}`) our `image_url`, as a file (an Upload) our `image_object`, left as
    the Upload for the route to store; the `Idempotency-Key` header our `idempotency_key`.
    Everything else is the request's own field, validated by enqueue.

    Returns:
        The request, and {our field: the caller's name for it} for naming fields in errors.

    Raises:
        ApiError: a 400 naming the caller's field, where the translation itself fails.
    """
    if "image_object" in body:
        # Only the service's own upload sets it: a caller naming an object in our bucket
        # could have a worker send any object there to a provider.
        raise _invalid("unknown field; send the image as input_reference (a file) or image_url",
                       "image_object")  # fmt: skip
    request = dict(body)
    names: dict[str, str] = {}
    if form:
        for field in _JSON_IN_FORMS:
            if isinstance(text := request.get(field), str):
                # Left as it is if it is not JSON: the request's validation names the field.
                with contextlib.suppress(ValueError):
                    request[field] = json.loads(text)
        if isinstance(request.get("characters"), str):
            request["characters"] = [request["characters"]]
        for field, number in _NUMBERS_IN_FORMS.items():
            if isinstance(text := request.get(field), str):
                # Left as it is if it is no number: the request's validation names the field.
                with contextlib.suppress(ValueError):
                    request[field] = number(text.strip())
    if "seconds" in request:
        seconds = request.pop("seconds")
        if "duration" in request:
            raise _invalid("give seconds or duration, not both", "seconds")
        request["duration"] = _whole_seconds(seconds)
        names["duration"] = "seconds"
    if (reference := request.pop("input_reference", None)) is not None:
        if "image_url" in request:
            raise _invalid("give input_reference or image_url, not both", "input_reference")
        if isinstance(reference, Upload):
            # Left as the file: the route checks and stores it (producer/http/uploads.py).
            request["image_object"] = reference
            names["image_object"] = "input_reference"
        else:
            request["image_url"] = _reference_url(reference)
            names["image_url"] = "input_reference"
    if idempotency_key is not None:
        if request.get("idempotency_key") not in (None, idempotency_key):
            raise _invalid(
                "the Idempotency-Key header and the body's idempotency_key differ",
                "Idempotency-Key",
            )
        request["idempotency_key"] = idempotency_key
    return request, names


def _whole_seconds(value: Any) -> Any:
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _invalid(f'seconds must be a whole number of seconds, like "4" (got {value!r})',
                   "seconds")  # fmt: skip


def _reference_url(reference: Any) -> Any:
    if isinstance(reference, dict) and set(reference) == {"image_url"}:
        return reference["image_url"]
    if isinstance(reference, str):
        return reference
    raise _invalid(
        'input_reference must be a file (multipart), or {"image_url": "https://..."}',
        "input_reference",
    )


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)
