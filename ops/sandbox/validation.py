"""What a create request may ask for, checked the way the providers check it.

Two model families are accepted in both flavors:

- router models (``sora``, ``sora-pro`` and any other model given a timing in the config):
  any well-formed ``WxH`` (even, 16..1920) and a duration of 1..20 s;
- OpenAI's own models (``sora-2``, ``sora-2-pro``): ``seconds`` of 4, 8 or 12 and one of
  four sizes, as OpenAI validates them; an ``input_reference`` file is a JPEG, PNG or WebP
  image of exactly the video's size ("Inpaint image must match the requested width and
  height"), as OpenAI refuses any other.

Every rejection is a 400 naming the field (``param``) and the problem (``code``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from producer.core.images import IMAGE_TYPES, image_size, image_type
from producer.core.requests import ASPECT_RATIOS

from .errors import ApiError, invalid

OPENAI_MODELS = frozenset({"sora-2", "sora-2-pro"})
OPENAI_SECONDS = (4, 8, 12)
OPENAI_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
ROUTER_DURATION_S = (1, 20)
ROUTER_SIDE_PX = (16, 1920)
DEFAULT_DURATION_S = 4
MAX_SCENES = 20
MAX_REFERENCE_IMAGES = 10

# The unified endpoint's aspect ratios, as sizes: the ones videoqueue's requests map them to
# (small on purpose, cheap to encode, and for OpenAI's models one of the sizes they accept).
ASPECT_SIZES = ASPECT_RATIOS

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


@dataclass(frozen=True, slots=True)
class Scene:
    """One storyboard scene."""

    prompt: str
    duration_s: int


@dataclass(frozen=True, slots=True)
class ReferenceFile:
    """An ``input_reference`` file of a form, as the sandbox keeps it: what it is, not its
    bytes."""

    filename: str | None
    declared_type: str | None  # the part's Content-Type, as the client said
    image_type: str | None  # what its bytes are (None: not an image the API takes)
    size: tuple[int, int] | None  # (width, height), read from its header
    sha256: str
    size_bytes: int

    @classmethod
    def of(cls, filename: str | None, declared_type: str | None, data: bytes) -> ReferenceFile:
        return cls(filename, declared_type, image_type(data), image_size(data),
                   hashlib.sha256(data).hexdigest(), len(data))  # fmt: skip


@dataclass(frozen=True, slots=True)
class VideoSpec:
    """A validated video request: what the task will produce."""

    model: str
    prompt: str | None
    storyboard: tuple[Scene, ...] | None
    width: int
    height: int
    duration_s: int
    image_url: str | None
    characters: tuple[str, ...]
    has_input_reference: bool
    # The sha256 of an input_reference file's bytes (what the sandbox saw).
    input_reference_sha256: str | None = None

    @property
    def size(self) -> str:
        """The size as ``WxH``."""
        return f"{self.width}x{self.height}"


def parse_videos_create(body: dict[str, Any], *, models: set[str], default_model: str) -> VideoSpec:
    """Validate a ``POST /v1/videos`` body (router or OpenAI fields, JSON or form).

    Args:
        body: the decoded JSON object, or the form fields as a dict.
        models: every model name the sandbox serves.
        default_model: the model when the body names none.

    Returns:
        The validated spec.

    Raises:
        ApiError: a 400 naming the field and the problem.
    """
    model = _model(body, models, default_model)
    # Without size or aspect_ratio: OpenAI's default (portrait) for its models, else landscape.
    default = (720, 1280) if model in OPENAI_MODELS else (1280, 720)
    return _spec(body, model, *_shape(body, model, default))


def parse_unified_create(
    body: dict[str, Any], *, models: set[str], default_model: str
) -> VideoSpec:
    """Validate a ``POST /v1/video/create`` body (the router's unified format).

    Args:
        body: the decoded JSON object.
        models: every model name the sandbox serves.
        default_model: the model when the body names none.

    Returns:
        The validated spec.

    Raises:
        ApiError: a 400 naming the field and the problem.
    """
    model = _model(body, models, default_model)
    return _spec(body, model, *_shape(body, model, ASPECT_SIZES["16:9"]))


def _shape(body: dict[str, Any], model: str, default: tuple[int, int]) -> tuple[int, int]:
    # Both endpoints take either field, so that one client body works against either.
    size, ratio = body.get("size"), body.get("aspect_ratio")
    if size is not None and ratio is not None:
        raise invalid("give aspect_ratio or size, not both", code="invalid_value", param="size")
    if size is not None:
        return _size(size, model)
    if ratio is None:
        return default
    if ratio not in ASPECT_SIZES:
        raise invalid(
            f"unsupported aspect_ratio {ratio!r}; use one of {', '.join(ASPECT_SIZES)}",
            code="unsupported_aspect_ratio",
            param="aspect_ratio",
        )
    width, height = ASPECT_SIZES[ratio]
    if model in OPENAI_MODELS and f"{width}x{height}" not in OPENAI_SIZES:
        raise invalid(
            f"aspect_ratio {ratio!r} is not supported by {model}",
            code="unsupported_aspect_ratio",
            param="aspect_ratio",
        )
    return width, height


def parse_character(body: dict[str, Any]) -> tuple[str, str, list[str]]:
    """Validate a ``POST /sora/v1/characters`` body.

    Returns:
        (name, description, reference_images).

    Raises:
        ApiError: a 400 naming the field and the problem.
    """
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("name is required (a non-empty string)", code="missing_name", param="name")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise invalid("description must be a string", code="invalid_type", param="description")
    images = body.get("reference_images", [])
    if not isinstance(images, list) or len(images) > MAX_REFERENCE_IMAGES:
        raise invalid(
            f"reference_images must be a list of at most {MAX_REFERENCE_IMAGES} URLs",
            code="invalid_type",
            param="reference_images",
        )
    for url in images:
        _http_url(url, "reference_images")
    return name.strip(), description, images


def _spec(body: dict[str, Any], model: str, width: int, height: int) -> VideoSpec:
    prompt = body.get("prompt")
    storyboard_raw = body.get("storyboard")
    if prompt is not None and storyboard_raw is not None:
        raise invalid(
            "give either prompt or storyboard, not both", code="invalid_value", param="storyboard"
        )
    if prompt is None and storyboard_raw is None:
        raise invalid("prompt or storyboard is required", code="missing_prompt", param="prompt")

    storyboard: tuple[Scene, ...] | None = None
    if storyboard_raw is not None:
        storyboard = _storyboard(storyboard_raw)
        duration = sum(s.duration_s for s in storyboard)
        given = _duration_field(body)
        if given is not None and _int(given, "duration") != duration:
            raise invalid(
                f"duration {given} disagrees with the storyboard's total of {duration} s",
                code="invalid_duration",
                param="duration",
            )
    else:
        if not isinstance(prompt, str) or not prompt.strip():
            raise invalid(
                "prompt must be a non-empty string", code="invalid_prompt", param="prompt"
            )
        given = _duration_field(body)
        duration = DEFAULT_DURATION_S if given is None else _int(given, "duration")
    _check_duration(duration, model, "storyboard" if storyboard else "duration")

    image_url = body.get("image_url")
    if image_url is not None:
        _http_url(image_url, "image_url")
    ref = body.get("input_reference")
    if isinstance(ref, ReferenceFile):
        _reference_file(ref, model, width, height)
    elif isinstance(ref, dict):
        # OpenAI's JSON form of an input reference: {"image_url": ...} or {"file_id": ...}
        if ref.get("image_url") is not None:
            image_url = _http_url(ref["image_url"], "input_reference.image_url", data_ok=True)
    elif isinstance(ref, str):
        image_url = _http_url(ref, "input_reference", data_ok=True)

    characters = body.get("characters", [])
    if characters is None:
        characters = []
    if not isinstance(characters, list) or not all(isinstance(c, str) for c in characters):
        raise invalid(
            "characters must be a list of character ids", code="invalid_type", param="characters"
        )
    return VideoSpec(
        model=model,
        prompt=prompt if storyboard is None else None,
        storyboard=storyboard,
        width=width,
        height=height,
        duration_s=duration,
        image_url=image_url,
        characters=tuple(characters),
        has_input_reference=ref is not None,
        input_reference_sha256=ref.sha256 if isinstance(ref, ReferenceFile) else None,
    )


def _reference_file(ref: ReferenceFile, model: str, width: int, height: int) -> None:
    if ref.image_type is None:
        raise invalid(
            f"input_reference must be an image ({', '.join(IMAGE_TYPES)}); "
            f"got {ref.declared_type or 'a file of no type'} that is not one",
            code="invalid_image_format",
            param="input_reference",
        )
    if model in OPENAI_MODELS and ref.size != (width, height):
        got = "x".join(map(str, ref.size)) if ref.size else "an unreadable size"
        raise invalid(
            f"Inpaint image must match the requested width and height ({width}x{height}; "
            f"the image is {got})",
            code="invalid_value",
            param="input_reference",
        )


def _model(body: dict[str, Any], models: set[str], default_model: str) -> str:
    model = body.get("model", default_model)
    if not isinstance(model, str) or model not in models:
        raise invalid(
            f"unknown model {model!r}; use one of {', '.join(sorted(models))}",
            code="invalid_model",
            param="model",
        )
    return model


def _size(size: Any, model: str) -> tuple[int, int]:
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        raise invalid(
            f"malformed size {size!r}: expected WIDTHxHEIGHT, e.g. 1280x720",
            code="invalid_size",
            param="size",
        )
    if model in OPENAI_MODELS:
        if size not in OPENAI_SIZES:
            raise invalid(
                f"size {size} is not supported by {model}; use one of {', '.join(OPENAI_SIZES)}",
                code="invalid_size",
                param="size",
            )
    else:
        lo, hi = ROUTER_SIDE_PX
        for side in match.groups():
            if not lo <= int(side) <= hi or int(side) % 2:
                raise invalid(
                    f"size {size}: each side must be an even number of pixels in {lo}..{hi}",
                    code="invalid_size",
                    param="size",
                )
    return int(match[1]), int(match[2])


def _duration_field(body: dict[str, Any]) -> Any:
    # The router says "duration"; OpenAI says "seconds" (a string). One client may send either.
    return body.get("duration", body.get("seconds"))


def _int(value: Any, param: str) -> int:
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        return value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.strip().isdigit()
    ):
        return int(value)
    raise invalid(
        f"{param} must be a whole number of seconds, got {value!r}",
        code="invalid_duration",
        param=param,
    )


def _check_duration(duration: int, model: str, param: str) -> None:
    if model in OPENAI_MODELS:
        if duration not in OPENAI_SECONDS:
            raise invalid(
                f"duration {duration} s is not supported by {model}; use 4, 8 or 12",
                code="invalid_duration",
                param=param,
            )
        return
    lo, hi = ROUTER_DURATION_S
    if not lo <= duration <= hi:
        raise invalid(
            f"duration {duration} s is out of range {lo}..{hi}",
            code="invalid_duration",
            param=param,
        )


def _storyboard(raw: Any) -> tuple[Scene, ...]:
    if isinstance(raw, str):
        # A multipart form can only carry the storyboard as a JSON string.
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SCENES:
        raise invalid(
            f"storyboard must be a list of 1..{MAX_SCENES} scenes",
            code="invalid_storyboard",
            param="storyboard",
        )
    scenes = []
    for i, item in enumerate(raw):
        param = f"storyboard[{i}]"
        if not isinstance(item, dict):
            raise invalid(
                f"{param} must be an object with prompt and duration",
                code="invalid_storyboard",
                param=param,
            )
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise invalid(
                f"{param}.prompt must be a non-empty string",
                code="invalid_storyboard",
                param=f"{param}.prompt",
            )
        duration = _int(item.get("duration"), f"{param}.duration")
        if duration < 1:
            raise invalid(
                f"{param}.duration must be at least 1 s",
                code="invalid_duration",
                param=f"{param}.duration",
            )
        scenes.append(Scene(prompt=prompt, duration_s=duration))
    return tuple(scenes)


def _http_url(url: Any, param: str, *, data_ok: bool = False) -> str:
    ok = isinstance(url, str) and (
        (urlsplit(url).scheme in ("http", "https") and bool(urlsplit(url).netloc))
        or (data_ok and url.startswith("data:"))
    )
    if not ok:
        raise invalid(
            f"{param} must be an http(s) URL, got {url!r}", code="invalid_url", param=param
        )
    return url


__all__ = [
    "ApiError",
    "ReferenceFile",
    "Scene",
    "VideoSpec",
    "parse_character",
    "parse_unified_create",
    "parse_videos_create",
]
