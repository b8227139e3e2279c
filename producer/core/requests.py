"""What a backend can ask for: the request schema, validated before anything is enqueued."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from producer.core.errors import InvalidRequest
from producer.core.metadata import metadata_problems
from producer.core.settings import ApiFormat

_HTTP_URL = re.compile(r"^https?://[^\s/?#]+", re.IGNORECASE)
# Whitespace and control characters (C0, DEL, C1) anywhere in a URL.
_URL_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
# A request's JSON at most: prompts, storyboard and `extra` together (a storyboard of 20 long
# scenes fits); a job record, a provider call and a webhook each carry it.
MAX_REQUEST_BYTES = 128 * 1024
# Validation adds at most this much to a request's JSON (defaults such as `metadata: {}`).
_SIZE_SLACK_BYTES = 4096
# A job's priority within its tenant's queue (higher first), and the longest deadline_s.
PRIORITY_BOUND = 1000
MAX_DEADLINE_S = 7 * 86_400
ASPECT_RATIOS = {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)}


def http_url(value: str | None, field: str) -> str | None:
    """value, if it is an http(s) URL (or None).

    Raises:
        ValueError: naming field.
    """
    if value is None:
        return None
    if not _HTTP_URL.match(value):
        raise ValueError(f"{field} must be an http(s) URL")
    if _URL_UNSAFE.search(value):
        # An HTTP client refuses these (or, worse, splits a request line on them): refused
        # here, at enqueue, rather than failing every delivery attempt later.
        raise ValueError(f"{field} must not contain spaces or control characters")
    if problem := _url_problem(value):
        raise ValueError(f"{field} is not a valid URL ({problem})")
    return value


@lru_cache(maxsize=1024)
def _url_problem(value: str) -> str | None:
    """What httpx finds wrong with value, if anything. Cached: parsing costs more than the rest
    of a request's checks together, and a backend sends the same webhook URL with every job."""
    try:
        httpx.URL(value)
    except (httpx.InvalidURL, ValueError) as e:
        return str(e)
    return None


def unencodable_fields(value: Any, field: str = "") -> list[str]:
    """The fields (dotted paths) of a JSON-shaped value whose text, or whose keys, cannot be
    written as UTF-8 (a lone surrogate): Redis, JSON and HTTP would mangle or refuse them."""
    if isinstance(value, str):
        return [] if _encodable(value) else [field or "(request)"]
    if isinstance(value, dict):
        bad = [field or "(request)"] if not all(_encodable(str(k)) for k in value) else []
        for key, item in value.items():
            bad += unencodable_fields(item, f"{field}.{key}" if field else str(key))
        return bad
    if isinstance(value, list | tuple):
        return [f for i, item in enumerate(value) for f in unencodable_fields(item, f"{field}.{i}")]
    return []


def _json_bytes(value: Any) -> int | None:
    """The size of value as UTF-8 JSON, or None when some text in it cannot be encoded (or it
    is not JSON-shaped: the walk and the validators say what is wrong then)."""
    try:
        return len(json.dumps(value, ensure_ascii=False, default=str).encode())
    except (UnicodeEncodeError, TypeError, ValueError):
        return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Scene(BaseModel):
    """One scene of a storyboard."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    duration: int = Field(ge=1, le=60)


class StoredImage(BaseModel):
    """A reference image stored in our bucket (the HTTP service puts an `input_reference`
    upload there): where it is and what it is, never a URL of it (a presigned URL is a
    credential). The worker hands it to the provider as its dialect takes it."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(min_length=1, max_length=255)
    key: str = Field(min_length=1, max_length=1024)
    content_type: Literal["image/jpeg", "image/png", "image/webp"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=1)


class VideoRequest(BaseModel):
    """A video generation job, in the shape of the provider's own request plus our fields.

    Exactly one of `prompt` and `storyboard`. `size` ("WxH") or `aspect_ratio` ("16:9");
    each API format gets the one it understands. Unknown top-level fields are refused;
    `extra` is forwarded to the provider verbatim.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field("sora", min_length=1, max_length=100)
    prompt: str | None = Field(None, min_length=1, max_length=4000)
    size: str | None = None
    aspect_ratio: str | None = None
    duration: int | None = Field(None, ge=1, le=60)
    image_url: str | None = None
    # A reference image in our bucket instead of image_url (OpenAI's input_reference file).
    image_object: StoredImage | None = None
    storyboard: list[Scene] | None = Field(None, min_length=1, max_length=20)
    characters: list[str] = Field(default_factory=list, max_length=10)
    webhook_url: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)
    api_format: ApiFormat | None = None
    # The provider (by name, VIDEOQUEUE_PROVIDERS_FILE) to send it to; none: the first free one.
    provider: str | None = Field(None, min_length=1, max_length=64)
    # Within its tenant's jobs, higher first (aged: VIDEOQUEUE_PRIORITY_AGING_S); none: 0
    # for a single job, -1 for a batch's (so single jobs go first, as before priorities).
    priority: int | None = Field(None, ge=-PRIORITY_BOUND, le=PRIORITY_BOUND, strict=True)
    # Seconds after enqueue by which the job must have finished, or it fails
    # "deadline_exceeded" (its provider task cancelled): waiting for a slot counts too.
    deadline_s: float | None = Field(
        None, gt=0, le=MAX_DEADLINE_S, strict=True, allow_inf_nan=False
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not _SIZE.match(v):
            raise ValueError('size must look like "1920x1080" (width x height)')
        return v

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect(cls, v: str | None) -> str | None:
        if v is not None and v not in ASPECT_RATIOS:
            raise ValueError(f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}")
        return v

    @field_validator("image_url")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return http_url(v, "image_url")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        if problems := metadata_problems(v):
            raise ValueError("; ".join(p["message"] for p in problems))
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        return http_url(v, "webhook_url")

    @model_validator(mode="after")
    def _prompt_or_storyboard(self) -> VideoRequest:
        if (self.prompt is None) == (self.storyboard is None):
            raise ValueError("give exactly one of prompt and storyboard")
        if self.size is not None and self.aspect_ratio is not None:
            raise ValueError("give size or aspect_ratio, not both")
        if self.storyboard is not None and self.duration is not None:
            raise ValueError("duration is the sum of the storyboard's scenes; leave it out")
        if self.image_url is not None and self.image_object is not None:
            raise ValueError("give image_url or image_object, not both")
        return self

    @property
    def total_duration_s(self) -> int | None:
        if self.storyboard is not None:
            return sum(scene.duration for scene in self.storyboard)
        return self.duration


class CharacterRequest(BaseModel):
    """A reusable character (POST /sora/v1/characters)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=4000)
    reference_images: list[str] = Field(default_factory=list, max_length=10)

    @field_validator("reference_images")
    @classmethod
    def _images(cls, v: list[str]) -> list[str]:
        for url in v:
            http_url(url, "reference_images")
        return v


def _describe(error: ValidationError, where: str = "") -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(request)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (put provider-specific fields under `extra`)"
        problems.append({"field": f"{where}{field}", "message": msg})
    text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return text, problems


def parse_request(data: VideoRequest | dict[str, Any]) -> VideoRequest:
    """Validate one request.

    Raises:
        InvalidRequest: naming each bad field.
    """
    if isinstance(data, VideoRequest):
        return data
    if not isinstance(data, dict):
        raise InvalidRequest(f"a request must be a JSON object, not {type(data).__name__}")
    # One C-speed pass answers both questions for the common request; a walk says which field
    # cannot be encoded, and the exact size is measured only near the bound.
    size_hint = _json_bytes(data)
    if size_hint is None and (bad := unencodable_fields(data)):
        problems = [{"field": f, "message": "not valid unicode text (a lone surrogate)"}
                    for f in bad]  # fmt: skip
        raise InvalidRequest(f"invalid request: {', '.join(bad)}: not valid unicode text", problems)
    try:
        request = VideoRequest.model_validate(data)
    except ValidationError as e:
        text, problems = _describe(e)
        raise InvalidRequest(f"invalid request: {text}", problems) from None
    if size_hint is not None and size_hint + _SIZE_SLACK_BYTES <= MAX_REQUEST_BYTES:
        return request
    if (size := len(request.model_dump_json(exclude_none=True))) > MAX_REQUEST_BYTES:
        message = f"the request is {size} bytes as JSON; at most {MAX_REQUEST_BYTES}"
        raise InvalidRequest(
            f"invalid request: {message}", [{"field": "(request)", "message": message}]
        )
    return request


def parse_character(data: CharacterRequest | dict[str, Any]) -> CharacterRequest:
    """Validate a character request.

    Raises:
        InvalidRequest: naming each bad field.
    """
    if isinstance(data, CharacterRequest):
        return data
    if bad := unencodable_fields(data):
        problems = [{"field": f, "message": "not valid unicode text (a lone surrogate)"}
                    for f in bad]  # fmt: skip
        raise InvalidRequest(f"invalid character: {', '.join(bad)}: not valid unicode text",
                             problems)  # fmt: skip
    try:
        return CharacterRequest.model_validate(data)
    except ValidationError as e:
        text, problems = _describe(e)
        raise InvalidRequest(f"invalid character: {text}", problems) from None
