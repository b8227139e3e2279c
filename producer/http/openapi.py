"""What the OpenAPI document says beyond what FastAPI reads off the routes: the error answers
every route may give, and the create bodies (JSON, or OpenAI's form), which the routes read
themselves because one route takes both."""

from __future__ import annotations

from typing import Any

from producer.core.requests import VideoRequest
from producer.http.shapes import ErrorBody

_ERROR = {"model": ErrorBody}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Invalid input; `param` names the field."},
    401: {**_ERROR, "description": "A missing, unknown or revoked API key."},
    402: {
        **_ERROR,
        "description": "Over the tenant's budget: nothing was written; the answer's "
        "`budget` says the budget, what was spent and reserved, and what the request needs.",
    },
    403: {**_ERROR, "description": "A video URL whose signature is invalid or expired."},
    404: {**_ERROR, "description": "No such object (or not this key's tenant's)."},
    409: {**_ERROR, "description": "Not in a state that allows it."},
    413: {**_ERROR, "description": "The body is over the service's bound."},
    429: {**_ERROR, "description": "Over this key's request rate; see Retry-After."},
    503: {**_ERROR, "description": "Redis or S3 is unreachable; try again."},
}
# The character routes call the provider, which may fail.
PROVIDER_ERRORS = {**ERRORS, 502: {**_ERROR, "description": "The provider failed; try again."}}

# OpenAI's names for two of our fields, accepted by both create routes.
_OPENAI_FIELDS: dict[str, Any] = {
    "seconds": {
        "anyOf": [{"type": "string", "pattern": "^[0-9]+$"}, {"type": "integer"}],
        "description": 'OpenAI\'s name for duration, as a string ("4").',
    },
    "input_reference": {
        "type": "object",
        "properties": {"image_url": {"type": "string"}},
        "required": ["image_url"],
        "description": "OpenAI's reference image, as a URL (same as image_url).",
    },
}
_FORM_FIELDS = ("model", "prompt", "size", "aspect_ratio", "image_url", "webhook_url",
                "provider", "idempotency_key")  # fmt: skip


def create_body() -> dict[str, Any]:
    """The requestBody of a create route: the request as JSON, or OpenAI's form."""
    schema = _inline(VideoRequest.model_json_schema())
    schema["properties"].update(_OPENAI_FIELDS)
    schema["properties"].pop("image_object")  # set by the service from an upload, never sent
    fields = {name: {"type": "string"} for name in _FORM_FIELDS}
    fields["seconds"] = {"type": "string", "pattern": "^[0-9]+$"}
    fields["priority"] = {"type": "string", "pattern": "^-?[0-9]+$"}
    fields["deadline_s"] = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
    fields["input_reference"] = {
        "type": "string", "format": "binary",
        "description": "The reference image, a file: JPEG, PNG or WebP (by its bytes), "
        "at most VIDEOQUEUE_HTTP_MAX_UPLOAD_BYTES (413 past it).",
    }  # fmt: skip
    content: dict[str, Any] = {
        "application/json": {"schema": schema},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": fields, "required": ["prompt"]}
        },
    }
    return {"requestBody": {"required": True, "content": content}}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """schema with its local $defs written in place (an operation's body cannot carry them)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result
