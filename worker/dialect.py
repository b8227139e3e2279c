"""Dialects: how one video API words the lifecycle, as data.

A dialect is a TOML file (the shipped ones in ``worker/dialects/``, a user's in
``VIDEOQUEUE_DIALECTS_DIR``) that says how to create a task (route, body mapping from our
VideoRequest, auth scheme), how to query it, which words mean waiting / running / done /
failed, where the progress, file URL and failure reason live in an answer, how to cancel, and
where the bytes are when an answer gives no URL, and whether and how the provider calls back
([callback]). worker/provider.py interprets it; nothing
about a particular API is written in code.

A user's file with a shipped dialect's name replaces the shipped one.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from producer.core.callbacks import CallbackSpec

SHIPPED = [
    "router",
    "openai",
    "openrouter",
    "replicate",
    "fal",
    "runway",
    "kling",
    "luma",
    "minimax",
    "seedance",
    "wan",
    "veo",
]
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class TaskState(StrEnum):
    """What a provider's status word means."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"


class UncertainCreate(StrEnum):
    """What becomes of a create that may have taken effect (a timeout, a 5xx, a dropped or
    unreadable answer, a worker that died before recording it): never a blind resend."""

    RESEND = "resend"  # sent again with the same idempotency key: the provider's same task
    LOOK_UP = "look_up"  # found by the key it sent (lookup); sent again only if not there
    END = "end"  # the job ends failed with "uncertain_create", for an operator to reconcile


class Auth(StrEnum):
    """How the API key is sent."""

    BEARER = "bearer"  # Authorization: Bearer KEY
    KEY = "key"  # Authorization: Key KEY (fal)
    GOOG = "x-goog-api-key"  # x-goog-api-key: KEY (Gemini API)
    KLING_JWT = "kling-jwt"  # Authorization: Bearer JWT(HS256) from "ACCESS_KEY:SECRET_KEY"
    KEY_PARAM = "key-param"  # ?key=KEY (the Gemini API's other way)


# What a body field can be filled from: a field of VideoRequest. "size" and "aspect_ratio"
# are what the format's `dimensions` rule makes of the request's size and aspect ratio.
# "job_id" is our job's id, for APIs whose idempotency key is a body field (Kling's
# external_task_id). "image_object" is a reference image in our bucket (an input_reference
# upload): sent as a file part (type "file") or as a short-lived URL of it (type "url").
Source = Literal[
    "model",
    "prompt",
    "storyboard",
    "size",
    "aspect_ratio",
    "duration",
    "image_url",
    "image_object",
    "characters",
    "job_id",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BodyField(_Strict):
    """One field of the create body: where its value comes from and in what form."""

    # One of our fields, or a list of them: the first one the request sets (the router's
    # image_url from ["image_url", "image_object"]: a URL given, or one of the stored image).
    source: Source | tuple[Source, ...] | None = Field(None, alias="from")
    # A constant instead (Seedance's {"type": "text"} content item).
    value: str | int | float | bool | None = None
    # "file": the stored image as a multipart file part; "url": a URL, the stored image's
    # presigned for the provider at submit time (never recorded).
    type: Literal["as_is", "string", "int", "file", "url"] = "as_is"
    suffix: str = ""  # Luma's durations are "5s"
    # What joins a size's width and height instead of "x" (Runway "1280:720", Wan "1280*720").
    separator: str | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> BodyField:
        if (self.source is None) == (self.value is None):
            raise ValueError('a body field has either "from" or "value"')
        if self.source == ():
            raise ValueError('"from" names at least one field')
        image = "image_object" in self.sources
        if self.type == "file" and self.sources != ("image_object",):
            raise ValueError('a "file" field is from "image_object" only')
        if image and self.type not in ("file", "url"):
            raise ValueError('a field from "image_object" has type "file" or "url"')
        return self

    @property
    def sources(self) -> tuple[str, ...]:
        """The fields it is filled from, in order of preference."""
        if self.source is None:
            return ()
        return (self.source,) if isinstance(self.source, str) else self.source


class Create(_Strict):
    """One create format: the route, the body and how it is sent."""

    method: Literal["POST"] = "POST"
    path: str
    encoding: Literal["json", "multipart"] = "json"
    # Which of size / aspect ratio the API speaks: "size" (a ratio becomes its WxH),
    # "aspect_ratio" (a size is not sent), "aspect_ratio_or_size" (the ratio when given).
    dimensions: Literal["size", "aspect_ratio", "aspect_ratio_or_size"] = "size"
    # their dotted field path -> our field (a str) or a table {from, type, suffix}
    body: dict[str, BodyField]
    headers: dict[str, str] = Field(default_factory=dict)
    # None or "" where the API has no idempotency header.
    idempotency_header: str | None = "Idempotency-Key"
    # An undocumented query route tried where the documented one is not served (404/405).
    query_fallback: str | None = None

    @field_validator("body", mode="before")
    @classmethod
    def _short_form(cls, body: Any) -> Any:
        if isinstance(body, dict):
            return {k: {"from": v} if isinstance(v, str) else v for k, v in body.items()}
        return body

    @model_validator(mode="after")
    def _files_in_forms(self) -> Create:
        files = [name for name, field in self.body.items() if field.type == "file"]
        if files and self.encoding != "multipart":
            raise ValueError(f'body.{files[0]}: a "file" field needs encoding = "multipart"')
        return self


class Route(_Strict):
    """A call on the task: method and path template ({id}: the provider's task id)."""

    method: Literal["GET", "POST", "PUT", "DELETE"] = "GET"
    path: str


class Reason(_Strict):
    """Where a failure's message (and its code) are."""

    message: str
    code: str | None = None


class Result(_Strict):
    """An extra call for the file once the task is done (MiniMax's file retrieval, fal's
    response_url): a route, or an absolute URL the answer gives (only on the API's origin)."""

    method: Literal["GET", "POST"] = "GET"
    path: str | None = None
    url_from: str | None = None
    # Placeholders of path filled from the task's answer: {"file_id": "file_id"}.
    params: dict[str, str] = Field(default_factory=dict)
    file_url: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_place(self) -> Result:
        if (self.path is None) == (self.url_from is None):
            raise ValueError('a result has either "path" or "url_from"')
        if self.path is not None and (
            bad := set(_PLACEHOLDER.findall(self.path)) - {"id", *self.params}
        ):
            raise ValueError(f"result.path: unknown placeholder {sorted(bad)}")
        return self


class Answer(_Strict):
    """Where things are in a task answer (dotted paths, "[0]" for a list's first item)."""

    # Wrappers around the task ({"code":..., "data": {...}}): used when the top level has
    # none of the status fields and the wrapper holds one.
    unwrap: list[str] = Field(default_factory=list)
    id: list[str] = Field(default_factory=lambda: ["id"], min_length=1)
    # The id is the path of a URL the answer gives (fal: response_url), for APIs whose
    # routes for a task depend on more than its id.
    id_from_url: bool = False
    status: list[str] = Field(default_factory=lambda: ["status"])
    # A boolean saying the task ended, for APIs with no status word (long-running operations).
    done_flag: str | None = None
    # What no status field at all means.
    no_status: Literal["waiting", "unknown"] = "waiting"
    progress: list[str] = Field(default_factory=list)
    # Progress is multiplied by this into 0..100 (1 where the API counts in per cent).
    progress_scale: float = Field(1.0, gt=0)
    file_url: list[str] = Field(default_factory=list)
    width: list[str] = Field(default_factory=list)
    height: list[str] = Field(default_factory=list)
    duration: list[str] = Field(default_factory=list)
    # None: the general rule (error.message, error, fail_reason, failure_reason, message, ...).
    reasons: list[Reason] | None = None
    # Where the answer says what was charged or counted: a number, or an object of numbers.
    usage: list[str] = Field(default_factory=list)
    # Where the answer says what the task cost, in US dollars (a number; "$." reads the whole
    # answer): the ledger charges it instead of the price table's (producer/core/ledger.py).
    cost: list[str] = Field(default_factory=list)
    # Codes of a create refused in the body (HTTP 200, no task) that mean "try again later"
    # (Kling 1303: concurrency over the resource pack's limit; MiniMax 1002: rate limit).
    retry_codes: list[str] = Field(default_factory=list)
    # A task done with no file (Veo's safety filter, OpenRouter's empty URL list) failed.
    done_requires_file: bool = False


class States(_Strict):
    """Which words (case-insensitive) mean what; any other word is UNKNOWN (keep polling)."""

    waiting: list[str] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list)
    # Empty only where the API has no words (Veo: answer.done_flag).
    done: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> States:
        seen: dict[str, str] = {}
        for state in ("waiting", "running", "done", "failed"):
            for word in getattr(self, state):
                if (other := seen.setdefault(word.lower(), state)) != state:
                    raise ValueError(f"the word {word!r} is both {other} and {state}")
        return self

    def vocabulary(self) -> dict[str, TaskState]:
        return {
            word.lower(): TaskState(state)
            for state in ("waiting", "running", "done", "failed")
            for word in getattr(self, state)
        }


class Dialect(_Strict):
    """One API's dialect (see the module docstring and README "Providers and their dialects")."""

    name: str
    source: str = Field(min_length=1)  # the documentation it was mapped from
    auth: Auth = Auth.BEARER
    # Headers on every call (Runway's X-Runway-Version).
    headers: dict[str, str] = Field(default_factory=dict)
    # Characters of a task id left as they are in a path (Veo's ids are operation names,
    # "models/m/operations/o"); every other character is percent-encoded.
    id_path_safe: Literal["", "/"] = ""
    # Create formats by name; a job's api_format picks one, else the first.
    create: dict[str, Create] = Field(min_length=1)
    query: Route
    answer: Answer = Field(default_factory=Answer)
    states: States
    cancel: Route | None = None
    # Where a task is found by the key we sent with its create ({key}: the job's submit key,
    # Kling's external_task_id), for a create that may have taken effect without its answer
    # reaching us. None where the API has no such lookup.
    lookup: Route | None = None
    # Where the bytes are when a finished task's answer gives no URL (OpenAI's /content).
    content: Route | None = None
    result: Result | None = None
    # Whether and how the provider calls back when a task changes (producer/core/callbacks.py;
    # README "Provider callbacks"); None: it cannot, and its jobs are polled.
    callback: CallbackSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("a dialect name is lower-case letters, digits, - and _")
        return name

    @model_validator(mode="after")
    def _routes(self) -> Dialect:
        if not self.states.done and self.answer.done_flag is None:
            raise ValueError("states.done is empty: name the done words, or an answer.done_flag")
        routes = [("query", self.query), ("cancel", self.cancel), ("content", self.content)]
        for what, route in routes:
            if route is not None and "{id}" not in route.path:
                raise ValueError(f"{what}.path must contain {{id}}")
        paths = [r.path for _, r in routes if r] + [c.path for c in self.create.values()]
        result = self.result.path if self.result is not None else None
        if result is not None and not result.startswith("/"):
            raise ValueError(f"{result!r}: a route path starts with /")
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"{path!r}: a route path starts with /")
            if bad := set(_PLACEHOLDER.findall(path)) - {"id", "model"}:
                raise ValueError(f"{path!r}: unknown placeholder {sorted(bad)}")
        if self.lookup is not None:
            if not self.lookup.path.startswith("/"):
                raise ValueError(f"{self.lookup.path!r}: a route path starts with /")
            if set(_PLACEHOLDER.findall(self.lookup.path)) != {"key"}:
                raise ValueError("lookup.path must contain {key} and no other placeholder")
            keyless = [n for n, c in self.create.items()
                       if not any("job_id" in f.sources for f in c.body.values())]  # fmt: skip
            if keyless:
                raise ValueError(f"create.{keyless[0]}: a lookup finds a task by the key its "
                                 'create sent: map a body field from "job_id"')  # fmt: skip
        return self

    def after_uncertain_create(self, api_format: str | None) -> UncertainCreate:
        """What a create in this format that may have taken effect becomes (README,
        "Guarantees": after an uncertain create)."""
        if self.format_for(api_format).idempotency_header:
            return UncertainCreate.RESEND
        if self.lookup is not None:
            return UncertainCreate.LOOK_UP
        return UncertainCreate.END

    def format_for(self, api_format: str | None) -> Create:
        """The create format named api_format, else the dialect's first."""
        if api_format in self.create:
            return self.create[api_format]
        return next(iter(self.create.values()))

    @cached_property
    def vocabulary(self) -> dict[str, TaskState]:
        """Every word of the dialect, lower-cased, and what it means."""
        return self.states.vocabulary()

    def state_of(self, word: Any) -> TaskState:
        """The meaning of a status word, case-insensitively; UNKNOWN if unheard of."""
        if not isinstance(word, str):
            return TaskState.UNKNOWN
        return self.vocabulary.get(word.strip().lower(), TaskState.UNKNOWN)


class DialectError(ValueError):
    """Raised when a dialect is unknown or its file does not describe a valid dialect."""


def _read(name: str, text: str, where: str) -> Dialect:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DialectError(f"{where}: not valid TOML: {e}") from None
    data.setdefault("name", name)
    try:
        dialect = Dialect.model_validate(data)
    except ValidationError as e:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise DialectError(f"{where}: {fields}") from None
    if dialect.name != name:
        raise DialectError(f"{where}: name {dialect.name!r} differs from the file's name")
    return dialect


@lru_cache(maxsize=64)
def load_dialect(name: str, user_dir: str | None = None) -> Dialect:
    """The dialect called name: the user's file ``{user_dir}/{name}.toml``, else the shipped one.

    Raises:
        DialectError: naming the dialect, the file and each bad field.
    """
    if not _NAME.match(name):
        raise DialectError(f"VIDEOQUEUE_API_DIALECT: {name!r} is not a dialect name")
    if user_dir:
        path = Path(user_dir) / f"{name}.toml"
        if path.is_file():
            return _read(name, path.read_text(encoding="utf-8"), str(path))
    shipped = resources.files("worker") / "dialects" / f"{name}.toml"
    if shipped.is_file():
        return _read(name, shipped.read_text(encoding="utf-8"), f"worker/dialects/{name}.toml")
    known = ", ".join(available(user_dir))
    raise DialectError(f"VIDEOQUEUE_API_DIALECT: no dialect {name!r} (known: {known})")


def available(user_dir: str | None = None) -> list[str]:
    """The names of every dialect there is a file for."""
    names = {
        p.name.removesuffix(".toml")
        for p in (resources.files("worker") / "dialects").iterdir()
        if p.name.endswith(".toml")
    }
    if user_dir and Path(user_dir).is_dir():
        names |= {p.stem for p in Path(user_dir).glob("*.toml")}
    return sorted(names)
