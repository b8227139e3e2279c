"""Every knob of the sandbox provider, in one pydantic model.

A profile (JSON or TOML file) and the CLI flags fill the same model; at run time
``Sandbox.configure(...)`` and ``POST /_sandbox/config`` patch it. Each fault knob is off by
default, and every random choice is drawn from generators seeded with ``seed``, so a run with
the same seed and the same sequence of requests makes the same choices.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# What h11 (uvicorn's HTTP layer) accepts as a header value, restricted to ASCII: anything else
# would make every answer that carries it fail at the server instead of reaching the client.
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")

Flavor = Literal["router", "openai"]
# The API dialect the sandbox speaks (worker/dialects/*.toml): router and openai are the
# flavors (setting one sets the other); the rest are in speech.py.
SandboxDialect = Literal[
    "router",
    "openai",
    "replicate",
    "runway",
    "kling",
    "luma",
    "seedance",
    "wan",
    "openrouter",
    "minimax",
    "veo",
    "fal",
]
# "all": every route either flavor knows; "documented": only what the seed's page
# (shared/reference/upstream-api.txt) documents, answering a missing task as new-api does.
Routes = Literal["all", "documented"]
Vocabulary = Literal["standard", "alt", "upper", "novel"]
RouteClass = Literal["create", "status", "content", "file", "characters"]

# One request's fate in a fault_sequence: answered as usual ("pass"); refused before it takes
# effect ("429" with Retry-After: 1, "503", "404" as if its task were not there yet); or
# taken, its answer then held until the client gives up ("hang") or replaced by a 502 ("lost").
SequencedFault = Literal["pass", "429", "503", "404", "hang", "lost"]
# How a file host that is down refuses a download: a 503 (with Retry-After: 1), a connection
# reset before any answer, or no answer at all until the client gives up.
FileOutage = Literal["503", "reset", "timeout"]

ALL_ROUTE_CLASSES: list[RouteClass] = ["create", "status", "content", "file", "characters"]

# Speed-up applied to every generation time in fast mode: a 4 s sora clip then takes ~0.05 s
# and the slowest clip (20 s sora-pro) well under a second.
FAST_TIME_SCALE = 0.005


class ModelTiming(BaseModel):
    """How long one model takes: ``base_s + per_video_second_s * duration``, then jitter."""

    model_config = ConfigDict(extra="forbid")

    base_s: float = Field(ge=0)
    per_video_second_s: float = Field(ge=0)


def _default_timings() -> dict[str, ModelTiming]:
    # Realistic orders of magnitude, but short enough for a demo: a 4 s sora clip takes ~12 s,
    # the same clip on sora-pro ~27 s (the issue: "within a minute" with default settings).
    return {
        "sora": ModelTiming(base_s=6.0, per_video_second_s=1.5),
        "sora-pro": ModelTiming(base_s=15.0, per_video_second_s=3.0),
        "sora-2": ModelTiming(base_s=6.0, per_video_second_s=1.5),
        "sora-2-pro": ModelTiming(base_s=15.0, per_video_second_s=3.0),
    }


class SandboxConfig(BaseModel):
    """The sandbox's configuration; every field is a knob (see README.md, "The sandbox provider").

    Unknown fields are rejected so that a typo in a profile or a ``/_sandbox/config`` patch
    fails loudly instead of silently leaving a fault switched off.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- identity ---
    flavor: Flavor = "router"
    dialect: SandboxDialect = "router"
    routes: Routes = "all"
    api_key: str = Field(default="sk-sandbox", min_length=1)
    # More keys that are accepted; limits and stats are kept per key.
    extra_api_keys: list[str] = Field(default_factory=list)
    # Absolute base for file URLs (e.g. behind Docker port mapping); None: the Host header.
    public_base_url: str | None = None
    # The admin routes under /_sandbox (stats, config, reset); off for a shared deployment.
    admin: bool = True

    # --- generation time ---
    seed: int = 0
    fast: bool = False
    # Multiplies every generation time (fast mode multiplies it again by FAST_TIME_SCALE).
    time_scale: float = Field(default=1.0, gt=0)
    # +/- this fraction of uniform jitter on each task's generation time.
    jitter: float = Field(default=0.2, ge=0, lt=1)
    # The first part of a generation during which the task reads as queued (not yet running).
    queued_fraction: float = Field(default=0.2, ge=0, le=1)
    timings: dict[str, ModelTiming] = Field(default_factory=_default_timings)
    # The openai-poll-after-ms header; None: the time left, clamped to 20 ms .. 5 s.
    poll_after_ms: int | None = Field(default=None, ge=0)

    # --- limits (429 with Retry-After) ---
    rpm_limit: int | None = Field(default=None, ge=1)
    rps_limit: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)

    # --- transport faults ---
    error_rate: float = Field(default=0.0, ge=0, le=1)
    error_routes: list[RouteClass] = Field(default_factory=lambda: list(ALL_ROUTE_CLASSES))
    error_codes: list[int] = Field(default_factory=lambda: [500, 502, 503])
    slow_rate: float = Field(default=0.0, ge=0, le=1)
    slow_s: float = Field(default=2.0, ge=0)
    slow_routes: list[RouteClass] = Field(default_factory=lambda: list(ALL_ROUTE_CLASSES))
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=300.0, ge=0)
    # A create that makes the task but answers 502: the lost-response case Idempotency-Key is for.
    lost_create_rate: float = Field(default=0.0, ge=0, le=1)
    # Requests on drip_routes refused with a 503 whose body (with drip_head: whose status line
    # and headers, then body) leaves a byte every half second, before they take effect.
    drip_error_rate: float = Field(default=0.0, ge=0, le=1)
    drip_head: bool = False
    drip_routes: list[RouteClass] = Field(default_factory=lambda: list(ALL_ROUTE_CLASSES))
    # The fates of a route class's next requests, in order (then the knobs above decide):
    # {"create": ["hang", "429"]} is a create that times out after making its task, then one
    # refused with 429. Setting it starts every sequence from its beginning.
    fault_sequence: dict[RouteClass, list[SequencedFault]] = Field(default_factory=dict)

    # --- task faults ---
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    stuck_rate: float = Field(default=0.0, ge=0, le=1)

    # --- malformed answers (oddities.py) ---
    # Sent verbatim as Retry-After on every 429, every 5xx and every successful status query,
    # replacing the sandbox's own value: garbage ("soon", "-5") and huge hints ("99999999999").
    retry_after: str | None = None
    # Status queries answered 200 with, instead of the task: a CDN's HTML page; truncated JSON.
    html_rate: float = Field(default=0.0, ge=0, le=1)
    non_json_rate: float = Field(default=0.0, ge=0, le=1)
    # Status queries answered with the task minus its status field; with "progress": NaN.
    missing_status_rate: float = Field(default=0.0, ge=0, le=1)
    nan_progress_rate: float = Field(default=0.0, ge=0, le=1)
    # Status queries answered 200 with a JSON body that never ends.
    endless_rate: float = Field(default=0.0, ge=0, le=1)
    # Status queries answered 200 with the task's JSON a byte every half second (a drip).
    drip_rate: float = Field(default=0.0, ge=0, le=1)
    # A failed task's error.code as a JSON number (40001) instead of a string.
    numeric_error_code: bool = False
    # A completed task's file URL(s) as a list of one string.
    url_as_list: bool = False

    # --- file faults and shape ---
    # File URLs expire this long after the task query that handed them out (0: at once).
    url_ttl_s: float | None = Field(default=None, ge=0)
    # File URLs carry their expiry inside one opaque token (`?token=`), as many CDNs' do: a
    # client learns that one has expired only from the 403.
    opaque_urls: bool = False
    # Downloads (file URLs, the CDN route, /content) refused for this many seconds from when
    # the knob is set (the sandbox's start, for a profile or a flag), then served again: a
    # file host down for longer than a client's retry budget. 0: no outage.
    file_outage_s: float = Field(default=0.0, ge=0)
    # How the file host refuses meanwhile (FileOutage).
    file_outage: FileOutage = "503"
    truncate_rate: float = Field(default=0.0, ge=0, le=1)
    # Downloads whose moov box is garbage (ftyp intact, same length): unplayable.
    broken_moov_rate: float = Field(default=0.0, ge=0, le=1)
    # Downloads whose frames are garbage (ftyp and moov intact, same length): the shape
    # probes, no frame decodes.
    garbled_frames_rate: float = Field(default=0.0, ge=0, le=1)
    # Downloads whose Content-Length promises half of the bytes that follow it.
    short_content_length_rate: float = Field(default=0.0, ge=0, le=1)
    cdn_base_url: str | None = None
    vocabulary: Vocabulary = "standard"
    file_padding_bytes: int = Field(default=0, ge=0)
    # Every download is spread over this many seconds (a slow CDN; 0: as fast as it goes).
    file_stream_s: float = Field(default=0.0, ge=0)
    # Downloads leave in pieces of this many bytes (with file_stream_s: a body that drips).
    file_chunk_bytes: int = Field(default=1 << 20, ge=1, le=1 << 20)
    # Downloads sent without a Content-Length (chunked), so only their bytes tell the size.
    file_unsized: bool = False
    fps: int = Field(default=1, ge=1, le=30)

    # --- billing (what the ledger's charges are checked against) ---
    # USD per second of video, by model (a model not named bills nothing). Each task is billed
    # once, when it is made (a create replayed by its Idempotency-Key bills nothing more),
    # whatever becomes of it: failed, cancelled or deleted tasks stay billed. The stats list
    # every charge by task id (`charges`).
    usd_per_second: dict[str, float] = Field(default_factory=dict)
    # Task answers (router and openai flavors) carry their bill as `usage.cost`, OpenRouter's
    # place for it, which the router dialect reads.
    report_cost: bool = False

    # --- callbacks (callbacks.py): for dialects whose provider calls back ---
    # Call back a create that carries a callback URL (in the provider's field for it).
    callbacks: bool = True
    # Shares of deliveries lost, sent twice, forged (a bad signature; for an unsigned
    # provider, to a made-up token) and sent to another task's URL (a wrong job).
    callback_lost_rate: float = Field(default=0.0, ge=0, le=1)
    callback_duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    callback_forged_rate: float = Field(default=0.0, ge=0, le=1)
    callback_wrong_job_rate: float = Field(default=0.0, ge=0, le=1)
    # Every final callback this long after its task ended.
    callback_late_s: float = Field(default=0.0, ge=0)
    # After the final callback, a stale "running" one.
    callback_out_of_order: bool = False
    # What Standard Webhooks and OpenRouter-style callbacks are signed with (Replicate's is
    # also served at GET /v1/webhooks/default/secret).
    webhook_secret: str = Field(default="whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC0xMjM0NQ==",
                                pattern=r"^whsec_[A-Za-z0-9+/=]+$")  # fmt: skip

    # --- robustness ---
    max_json_bytes: int = Field(default=1 << 20, ge=1024)
    max_upload_bytes: int = Field(default=20 << 20, ge=1024)

    @model_validator(mode="before")
    @classmethod
    def _dialect_is_the_flavor(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        flavors = ("router", "openai")
        dialect, flavor = data.get("dialect"), data.get("flavor")
        if dialect in flavors and flavor is None:
            return {**data, "flavor": dialect}
        if flavor is not None and dialect is None:
            return {**data, "dialect": flavor}
        if dialect in flavors and flavor != dialect:
            raise ValueError("flavor and dialect name the same thing: give one, or both alike")
        return data

    @field_validator("usd_per_second")
    @classmethod
    def _prices_are_amounts(cls, prices: dict[str, float]) -> dict[str, float]:
        if any(not 0 <= v <= 1_000_000 for v in prices.values()):
            raise ValueError("usd_per_second: each price is from 0 to 1000000 USD")
        return prices

    @field_validator("error_codes")
    @classmethod
    def _error_codes_are_5xx(cls, codes: list[int]) -> list[int]:
        if not codes or any(not 500 <= c <= 599 for c in codes):
            raise ValueError("error_codes must be a non-empty list of 5xx codes")
        return codes

    @field_validator("retry_after")
    @classmethod
    def _retry_after_is_a_header_value(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_VALUE.fullmatch(value):
            raise ValueError(
                "retry_after must be printable ASCII without leading or trailing whitespace"
            )
        return value

    @field_validator("timings")
    @classmethod
    def _keep_default_models(cls, timings: dict[str, ModelTiming]) -> dict[str, ModelTiming]:
        # A profile that retimes one model must not make the others unknown.
        return {**_default_timings(), **timings}

    @field_validator("cdn_base_url", "public_base_url")
    @classmethod
    def _strip_slash(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return url.rstrip("/")

    @property
    def api_keys(self) -> frozenset[str]:
        """Every key the sandbox accepts."""
        return frozenset([self.api_key, *self.extra_api_keys])

    @property
    def effective_time_scale(self) -> float:
        """The factor applied to every generation time."""
        return self.time_scale * (FAST_TIME_SCALE if self.fast else 1.0)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> SandboxConfig:
        """Load a profile: a JSON object, or a TOML table at top level.

        Args:
            path: a ``.json`` or ``.toml`` file (by suffix; anything else is read as JSON).
            **overrides: fields that win over the file (the CLI's explicit flags).

        Returns:
            The validated config.
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a profile must be an object/table of knobs")
        return cls.model_validate({**data, **overrides})

    def patched(self, patch: dict[str, Any]) -> SandboxConfig:
        """A copy with patch applied, validated as a whole (unknown keys rejected)."""
        current = self.model_dump()
        if "dialect" in patch or "flavor" in patch:
            current.pop("dialect")
            current.pop("flavor")
        return type(self).model_validate({**current, **patch})
