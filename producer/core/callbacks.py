"""Provider callbacks: what a dialect file says about them, and the keys they use in Redis.

A provider that can call back when a task changes (Replicate's `webhook`, fal's `fal_webhook`,
OpenRouter's `callback_url`, ...) is told so in its dialect file's `[callback]` table
(`CallbackSpec`): the create field that carries the URL, how the provider signs, where the
task id and status sit in what it sends, any handshake. The worker reads it with the rest of
the dialect (worker/dialect.py); the HTTP service (producer/http/callbacks.py), which loads no
worker code, reads the same table here.

Each create that carries a callback URL gets a token of its own in the URL's path
(`{VIDEOQUEUE_PUBLIC_URL}/callbacks/{provider}/{token}`): only its sha256 is stored, under
which the job is found. This module is the one writer of those keys and of the delivery ids
already seen (replays are refused).
"""

from __future__ import annotations

import hashlib
import importlib.util
import secrets
import tomllib
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from producer.core.names import Keys
from producer.core.settings import Settings

# The path under the HTTP service that receives callbacks (a contract: README).
CALLBACK_PREFIX = "/callbacks"
# A callback token, and a delivery id seen, outlive the job's deadline by this much: fal
# retries a callback for about 2 hours.
TOKEN_GRACE_S = 3 * 3600.0


class Signature(StrEnum):
    """How a provider signs what it sends (README "Provider callbacks")."""

    STANDARD = "standard-webhooks"  # webhook-id/-timestamp/-signature, HMAC-SHA256 (Replicate)
    OPENROUTER = "hmac-openrouter"  # X-OpenRouter-Signature: t=..,v1=hex HMAC of "t,body"
    ED25519 = "ed25519-jwks"  # fal: ED25519 over id, user, time, sha256(body); keys by JWKS
    JWT = "jwt-jwks"  # an RS256 JWT in webhook-signature, keys by JWKS (Gemini's dynamic hooks)
    NONE = "none"  # unsigned: only the URL's token, and one status query, vouch for it

    @property
    def keyed(self) -> bool:
        """Verified with a shared secret (else a published key set, or nothing)."""
        return self in (Signature.STANDARD, Signature.OPENROUTER)


class CallbackSpec(BaseModel):
    """A dialect's `[callback]` table: whether and how its provider calls back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where the URL goes: a dotted field of the create body, or a query parameter of the
    # create's URL (fal's fal_webhook).
    url_in: Literal["body", "query"] = "body"
    url_field: str = Field(min_length=1)
    # Constant body fields sent with it (Replicate's webhook_events_filter).
    send: dict[str, Any] = Field(default_factory=dict)
    signature: Signature
    # Where the task id and its status sit in a callback's body (dotted paths, the first
    # present wins).
    id: list[str] = Field(default_factory=lambda: ["id"], min_length=1)
    status: list[str] = Field(default_factory=lambda: ["status"])
    # Status words (case-insensitive) that say the task ended: only those make the job's next
    # poll due now. Empty: every callback does. Other words ("processing") are acknowledged
    # and change nothing: the poll they would cause could only say "still running".
    ends: list[str] = Field(default_factory=list)
    # "challenge": a body {"challenge": X} is answered {"challenge": X} at once (MiniMax).
    handshake: Literal["none", "challenge"] = "none"
    # Where the account's signing secret is fetched with the API key when no setting gives
    # it (Replicate's GET /v1/webhooks/default/secret -> {"key": "whsec_..."}).
    secret_route: str | None = None
    # The provider's published key set (JWKS) for ed25519-jwks and jwt-jwks.
    keys_url: str | None = None

    @model_validator(mode="after")
    def _keys(self) -> CallbackSpec:
        if self.signature in (Signature.ED25519, Signature.JWT) and not self.keys_url:
            raise ValueError(f"signature {self.signature.value!r} needs keys_url (a JWKS URL)")
        if self.secret_route is not None and not self.secret_route.startswith("/"):
            raise ValueError("secret_route is a path under the API's base URL, starting with /")
        return self

    def ends_with(self, word: Any) -> bool:
        """Whether a callback with this status word says the task ended (or may have)."""
        if not self.ends or not isinstance(word, str):
            return True
        return word.strip().lower() in {w.lower() for w in self.ends}


class CallbackSpecError(ValueError):
    """Raised when a dialect file's [callback] table cannot be read."""


def _dialect_path(name: str, user_dir: str | None) -> Path | None:
    if user_dir and (Path(user_dir) / f"{name}.toml").is_file():
        return Path(user_dir) / f"{name}.toml"
    # Found without importing the worker package (which loads Celery): the HTTP service
    # reads this table too.
    spec = importlib.util.find_spec("worker")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "dialects" / f"{name}.toml"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=64)
def callback_spec(dialect: str, user_dir: str | None = None) -> CallbackSpec | None:
    """The dialect's [callback] table (the user's file first, as for the whole dialect);
    None when its provider does not call back.

    Raises:
        CallbackSpecError: naming the file and the field.
    """
    path = _dialect_path(dialect, user_dir)
    if path is None:
        return None
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("callback")
        return None if table is None else CallbackSpec.model_validate(table)
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise CallbackSpecError(f"{path}: callback: {e}") from None


def callback_secret(settings: Settings, dialect: str) -> SecretStr | None:
    """The signing secret configured for a dialect's callbacks: VIDEOQUEUE_<NAME>_WEBHOOK_SECRET
    for Replicate and OpenRouter (the contract), else VIDEOQUEUE_CALLBACK_SECRETS[dialect]."""
    named = {
        "replicate": settings.replicate_webhook_secret,
        "openrouter": settings.openrouter_webhook_secret,
    }.get(dialect)
    if named is not None and named.get_secret_value():
        return named
    return settings.callback_secrets.get(dialect)


def callback_url(public_url: str, provider: str, token: str) -> str:
    """The URL a create carries: the HTTP service's callback route for this provider and job."""
    return f"{public_url.rstrip('/')}{CALLBACK_PREFIX}/{quote(provider, safe='')}/{token}"


def digest(text: str) -> str:
    """sha256 hex of text: what is stored of a token, and what names a delivery."""
    return hashlib.sha256(text.encode()).hexdigest()


class CallbackTokens:
    """The per-job callback tokens (stored as their sha256 only) and the deliveries seen.

    Args:
        client: the Redis holding job records.
        keys: the deployment's keys.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def issue(self, job_id: str, provider: str, ttl_s: float) -> str:
        """A new unguessable token for the job's create at provider, valid ttl_s. Each create
        gets its own: an earlier create's token stays valid (a resent create may be the
        provider's first task, which calls the first URL)."""
        token = secrets.token_urlsafe(24)
        self.redis.set(self.keys.callback_token(digest(token)), f"{provider} {job_id}",
                       ex=max(1, int(ttl_s)))  # fmt: skip
        return token

    def holder(self, token: str) -> tuple[str, str] | None:
        """(provider, job id) the token was issued for; None for an unknown one."""
        raw = self.redis.get(self.keys.callback_token(digest(token)))
        if raw is None:
            return None
        provider, _, job_id = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(" ")
        return provider, job_id

    def first_delivery(self, provider: str, delivery_id: str, ttl_s: float) -> bool:
        """Remember a delivery id for ttl_s; False when it was seen already (a replay)."""
        key = self.keys.callback_delivery(provider, digest(delivery_id))
        return bool(self.redis.set(key, "1", nx=True, ex=max(1, int(ttl_s))))
