"""Every knob of videoqueue, read from the environment in one place.

Each field maps to an environment variable with the ``VIDEOQUEUE_`` prefix
(``poll_cap_s`` -> ``VIDEOQUEUE_POLL_CAP_S``). S3 credentials are not here on
purpose: boto3 reads them through its usual chain (AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producer.core.redis_client import check_url
from producer.core.urls import UrlPolicy, url_policy

# The botocore Config of every S3 client of ours (worker/storage.py, producer/http/content.py).
S3_CLIENT_OPTIONS: dict[str, Any] = {
    # Some S3-compatible servers (SeaweedFS, older MinIO) mishandle boto3's default CRC32
    # trailers on streamed parts; checksums are asked for only where required.
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    "s3": {"addressing_style": "path"},
    "retries": {"max_attempts": 5, "mode": "standard"},
}


class LogFormat(StrEnum):
    """How worker log lines are written."""

    CONSOLE = "console"  # readable key=value lines
    JSON = "json"  # one JSON object per line


class ApiFormat(StrEnum):
    """Which request shape the provider speaks."""

    OPENAI = "openai"  # POST /v1/videos
    UNIFIED = "unified"  # POST /v1/video/create


class Settings(BaseSettings):
    """videoqueue's configuration; every default is documented in the README."""

    # A refused value is not echoed in the error: a Redis URL may carry its password.
    model_config = SettingsConfigDict(
        env_prefix="VIDEOQUEUE_", extra="ignore", hide_input_in_errors=True
    )

    # --- Redis: the Celery broker, and the job records beside it ---
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Job records live in the broker's Redis unless told otherwise.
    redis_url: str | None = None
    # Either URL may name the sentinels of a Redis Sentinel deployment instead
    # ("sentinel://h1:26379;sentinel://h2:26379"; producer/core/redis_client.py): this is the
    # name of the master they monitor, and the sentinels' own password if they ask for one
    # (the URL's password is the Redis servers').
    sentinel_master: str = Field("mymaster", min_length=1)
    sentinel_password: SecretStr | None = None
    # The longest one call to the records' Redis waits (to connect, or for its answer), direct
    # or through Sentinel; None: no limit. The HTTP service uses 5 s when this is unset
    # (producer/http/calls.py): its Redis calls run on the event loop. A redis:// URL's own
    # socket_timeout= wins.
    redis_timeout_s: float | None = Field(None, gt=0)
    # The writes that guard money (a job pinned to a provider just before its create is sent;
    # a job's end, which settles its charge) wait until this many replicas have them (Redis
    # WAIT), so that a failover cannot lose them; 0: no wait. Costs one round trip to the
    # slowest of them, twice per job (README "Redis Sentinel"). A WAIT that times out is
    # logged and the step goes on.
    redis_wait_replicas: int = Field(0, ge=0)
    redis_wait_timeout_ms: int = Field(500, ge=1)
    # Every key videoqueue writes starts with this; tests give each run its own.
    key_prefix: str = "videoqueue"
    # The Celery queue the pipeline's tasks travel on; tests give each run its own.
    queue: str = "videoqueue"

    # --- the provider ---
    api_base_url: str = "http://127.0.0.1:8300"
    api_key: SecretStr = SecretStr("")
    api_format: ApiFormat = ApiFormat.OPENAI
    api_timeout_s: float = 30.0
    api_connect_timeout_s: float = 5.0

    # --- the provider's dialect (worker/dialect.py; README "Providers and their dialects") ---
    # Which API the single-provider settings speak: a shipped dialect (router, openai, ...) or
    # a file {name}.toml in dialects_dir. api_format picks the router's create format.
    api_dialect: str = Field("router", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    # A folder of the user's dialect files; one named like a shipped dialect replaces it.
    dialects_dir: Path | None = None

    # --- several providers (producer/core/providers.py; README "Several providers") ---
    # A TOML file of providers in order of preference; when set, it replaces the single
    # provider above (api_base_url, api_key, api_dialect, api_format and its limits).
    providers_file: Path | None = None
    # The single provider's prices without a providers file, as JSON: the table a
    # [[providers]] entry's `prices` holds ({"sora": {"usd_per_second": 0.1}}; README
    # "Prices"). Parsed with the providers (producer/core/providers.py), which name its field.
    prices: Annotated[dict[str, Any] | str | None, NoDecode] = None

    # --- submit retries (429, 5xx, timeouts) ---
    submit_max_attempts: int = Field(8, ge=1)
    retry_base_s: float = Field(2.0, gt=0)
    # The longest wait before a retry, the provider's Retry-After included.
    retry_cap_s: float = Field(120.0, gt=0)

    # --- polling ---
    poll_first_s: float = Field(2.0, gt=0)
    poll_factor: float = Field(1.2, ge=1.0)
    # The longest wait between two status queries, the provider's poll hint included.
    poll_cap_s: float = Field(30.0, gt=0)
    # A job not finished at the provider this long after submission fails with "timeout"
    # (a request's own deadline_s counts from enqueue, and fails it "deadline_exceeded").
    deadline_s: float = Field(3600.0, gt=0)
    # Jobs one poll task queries at once (one message, one read, one write for all).
    poll_batch_size: int = Field(50, ge=1, le=500)

    # --- the schedule (producer/core/schedule.py) ---
    # A claimed step not finished (nor extended) within this long comes due again: the
    # recovery time after a worker dies. A running step extends its lease every third of it.
    lease_s: float = Field(20.0, ge=2)
    # A step running longer than this is abandoned (Celery's hard time limit), so that no
    # hung call holds a job for good; its lease then brings it back.
    step_timeout_s: float = Field(3600.0, ge=10)
    # Unexpected exceptions (and lost leases) a job survives before it fails "internal_error".
    fault_max_attempts: int = Field(5, ge=1)
    # Messages the pump keeps waiting on each Celery queue at most: the rest of the due
    # work waits in the schedule, where a lost message costs nothing. Small, because a
    # claimed poll waits behind every message ahead of it (16 gave a 2.3 s p99 queue wait at
    # 10,000 in flight in the benchmark, 4 gave 0.4 s at the same throughput).
    dispatch_ahead: int = Field(4, ge=1)
    # Scarce provider slots and rate tokens go to tenants by weight (producer/core/lua/
    # claim_submit.lua); false: one queue for every tenant, by priority and due time (the
    # order before fair share), with no tenant's ceiling or reservation applied.
    fair_share: bool = True
    # What one step of a job's priority is worth in waiting time, within its tenant's queue:
    # a job waiting this much longer than another goes first at one step lower (aging, so
    # that no priority starves). Batch jobs default to one step below single jobs.
    priority_aging_s: float = Field(60.0, gt=0, le=86_400)

    # --- broker redelivery ---
    # On Redis a message delivered but not acknowledged is handed out again after this long.
    # Since the schedule's leases bring back a dead worker's steps (lease_s), a redelivered
    # message is a stale duplicate that does nothing; this no longer sets the recovery time.
    visibility_timeout_s: int = Field(900, ge=10)

    # --- provider limits, shared by every worker through Redis ---
    # Requests per second to the provider (submits and polls together); None: no limit.
    rate_limit_per_s: float | None = Field(None, gt=0)
    # Requests that may go at once after a quiet spell.
    rate_burst: int = Field(5, ge=1)
    # Generations at the provider at once per API key; None: no cap. Jobs over it wait
    # in Redis (single jobs before batch jobs) until a slot frees.
    max_in_flight: int | None = Field(None, ge=1)

    # --- S3 ---
    s3_endpoint_url: str | None = None
    s3_bucket: str = "videoqueue"
    s3_region: str = "us-east-1"
    s3_key_template: str = "videos/{job_id}.mp4"
    # Where the HTTP service stores input_reference uploads (named by their sha256), apart
    # from the videos; the workers' sweep deletes those older than record_ttl_s.
    s3_input_prefix: str = Field("inputs/", min_length=1, pattern=r"^[^{}]*/$")
    s3_part_size_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Parts uploaded while the next one downloads. Measured memory growth is about
    # (1.5 x this + 2) parts: 8 MiB x 2 held ~39 MiB while copying 1 GiB (bench/results).
    s3_parts_in_flight: int = Field(2, ge=1)
    download_max_attempts: int = Field(4, ge=1)
    download_timeout_s: float = 60.0

    # --- outbound URLs (producer/core/urls.py) ---
    # CIDRs and host names a worker may connect to although they are not public (the demo and
    # the tests allow loopback). Comma-separated from the environment.
    url_allowlist: Annotated[list[str], NoDecode] = []

    # --- hostile input: bounds and retention (issue 10) ---
    # A video bigger than this fails its job with "too_large" (no object is kept).
    max_video_bytes: int = Field(4 * 1024**3, ge=1)
    # The total time one download attempt may take, however slowly its bytes trickle;
    # a download past it fails the job with "download_timeout".
    download_deadline_s: float = Field(1800.0, gt=0)
    # A finished job's record and every key of it expire this long after it ended; the job
    # index (videoqueue jobs list) forgets jobs created longer ago than this.
    record_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)

    # --- our own API's keys (producer/core/keys.py; README "Tenants and keys") ---
    # Requests per second one API key may make (a token bucket in Redis, shared by every
    # replica of the HTTP service), and how many may come at once after a quiet spell.
    api_rate_per_s: float = Field(50.0, gt=0)
    api_burst: int = Field(100, ge=1)

    # --- webhooks ---
    webhook_secret: SecretStr | None = None
    # The total time of one delivery attempt (worker/webhooks.py shuts its connection down at
    # the deadline); the answer's body is never read.
    webhook_timeout_s: float = 15.0
    # Seconds to wait before each delivery attempt (Svix's schedule); the first is immediate.
    # From the environment: comma-separated ("0,5,300") or a JSON list.
    webhook_schedule_s: Annotated[list[float], NoDecode] = [
        0, 5, 300, 1800, 7200, 18000, 36000, 36000,
    ]  # fmt: skip

    # --- the HTTP service (`videoqueue serve`, producer/http/) ---
    # The service's base URL as its callers reach it (behind a balancer or a proxy), for the
    # URLs it answers with (`video.url`); None: the base URL of each request.
    http_public_url: str | None = None
    # Signs `video.url` so that it can be fetched without the Authorization header (a browser,
    # a CDN, another service) until it expires; None: the URL wants the caller's key. Every
    # replica needs the same one. Never logged.
    http_url_secret: SecretStr | None = None
    # How long a signed `video.url` works.
    http_url_ttl_s: float = Field(3600.0, gt=0)
    # The largest request body (413 past it): a create, a character; a batch has its own.
    http_max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # The largest batch body: 100,000 small requests as JSON Lines fit.
    http_max_batch_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # How long a console sign-in lasts (/console): a working day, then the key again.
    console_session_ttl_s: float = Field(8 * 3600.0, gt=0)
    # The largest input_reference file (413 naming it past this): OpenAI's reference images
    # are frames of the video (1792x1024 at most), a few MB as PNG.
    http_max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)

    # --- provider callbacks (producer/http/callbacks.py; README "Provider callbacks") ---
    # The HTTP service's base URL as the providers reach it; when set, each create to a
    # provider whose dialect has a [callback] table carries the URL
    # {public_url}/callbacks/{provider}/{token}, and polling becomes the safety net.
    public_url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    # Signing secrets (never logged): Replicate's (else fetched from its
    # GET /v1/webhooks/default/secret with the API key), OpenRouter's workspace secret, and
    # any other dialect's by name (JSON: {"mydialect": "whsec_..."}).
    replicate_webhook_secret: SecretStr | None = None
    openrouter_webhook_secret: SecretStr | None = None
    callback_secrets: dict[str, SecretStr] = {}
    # A dialect's published key set (JWKS) elsewhere than its file says (JSON: {"fal": URL}).
    callback_keys_urls: dict[str, str] = {}
    # The largest callback body read (413 past it, read no further).
    callback_max_body_bytes: int = Field(1024 * 1024, ge=1024)

    # --- operations: metrics, logs, the job index ---
    # The port every worker host serves Prometheus metrics on (its main process); None: none.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    log_format: LogFormat = LogFormat.CONSOLE
    # (The job index, videoqueue jobs list, forgets jobs older than record_ttl_s above.)

    @field_validator("webhook_schedule_s", mode="before")
    @classmethod
    def _schedule(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            return json.loads(text) if text.startswith("[") else [p for p in text.split(",") if p]
        return v

    @field_validator("url_allowlist", mode="before")
    @classmethod
    def _allowlist(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _redis_address(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            check_url(v, f"VIDEOQUEUE_{(info.field_name or '').upper()}")
        return v

    @field_validator("s3_input_prefix")
    @classmethod
    def _apart_from_videos(cls, v: str, info: ValidationInfo) -> str:
        videos = str(info.data.get("s3_key_template", "")).split("{", 1)[0]
        if videos.startswith(v):
            # The sweep deletes what is under it by age: the videos would go too.
            raise ValueError(f"must not hold the videos' keys ({videos!r}...)")
        return v

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value() and not v.get_secret_value().startswith("whsec_"):
            raise ValueError('VIDEOQUEUE_WEBHOOK_SECRET must look like "whsec_" + base64')
        return v

    @property
    def url_policy(self) -> UrlPolicy:
        """The outbound URL policy with this deployment's allowlist."""
        return url_policy(tuple(self.url_allowlist))

    @property
    def records_url(self) -> str:
        return self.redis_url or self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
