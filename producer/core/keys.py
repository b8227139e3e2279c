"""API keys of our own: who may call videoqueue's HTTP API, for which tenant, how often.

The one writer of the `apikeys*` key family (producer/core/names.py):

- A key's secret (`vq_` + 43 url-safe characters, 32 random bytes) is shown once, when it is
  made, and stored nowhere: Redis keeps its sha256 only. A hash of 256 random bits needs no
  salt or slow hash (nothing to guess from it), and looking a key up by its hash compares no
  secret byte by byte, so no timing tells how much of a guess was right.
- `authenticate` reads Redis on every call, no cache: a revoked key is refused by every
  replica from the next request on.
- Each key's requests are limited by a token bucket in Redis (lua/token_bucket.lua), shared by
  every replica: VIDEOQUEUE_API_RATE_PER_S, VIDEOQUEUE_API_BURST.

Nothing here logs, and no error or record carries a secret.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from functools import lru_cache

import redis
from pydantic import BaseModel

from producer.core.errors import KeyNotFound, Unauthenticated
from producer.core.names import Keys
from producer.core.records import utcnow_iso
from producer.core.scripts import Script
from producer.core.settings import Settings, get_settings
from producer.core.store import JobStore, store
from producer.core.tenants import check_tenant

SECRET_PREFIX = "vq_"
_SECRET_BYTES = 32
# The start of a secret a listing shows, so that a person can tell keys apart ("vq_" and 6
# characters: 36 bits of 256, too few to help a guess).
_SHOWN_CHARS = len(SECRET_PREFIX) + 6
# Longer than any secret we make: a longer one is refused before it is hashed.
_MAX_SECRET_CHARS = 128
# The one message for every refusal: which of missing, unknown, revoked or malformed it was
# would tell a guesser too much, and the secret itself is never repeated.
_REFUSED = "missing or invalid API key"


@dataclass(frozen=True)
class Principal:
    """Who a request is from: its key, the key's tenant, and whether it sees every tenant."""

    key_id: str
    tenant: str
    admin: bool


class ApiKey(BaseModel):
    """An API key as listed: never its secret (`prefix` is its first few characters)."""

    id: str
    tenant: str
    admin: bool
    created_at: str
    revoked_at: str | None
    prefix: str


class _StoredKey(ApiKey):
    """An API key as Redis keeps it: with its secret's sha256."""

    sha256: str

    def listed(self) -> ApiKey:
        return ApiKey.model_validate(self.model_dump(exclude={"sha256"}))


# Stands for a key's id in the name of its rate bucket, which admit.lua makes from the id it
# finds (names.py owns the name's shape).
_KEY_ID = "\x00key-id\x00"


def _well_formed(secret: object) -> str:
    """The secret, if it could be one of ours (else refused before anything is hashed)."""
    if (
        not isinstance(secret, str)
        or not secret.startswith(SECRET_PREFIX)
        or len(secret) > _MAX_SECRET_CHARS
        or not secret.isascii()
    ):
        raise Unauthenticated(_REFUSED)
    return secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class _KeyRing:
    """The API keys of one deployment (one Redis, one key prefix)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self._api_rate = Script(client, "api_rate")
        self._admit = Script(client, "admit")
        # A key's rate bucket is named around its id: admit.lua puts the id it finds between.
        self._bucket_head, _, self._bucket_tail = self.keys.api_key_rate(_KEY_ID).partition(_KEY_ID)

    def create(self, tenant: str, admin: bool) -> tuple[ApiKey, str]:
        secret = SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
        stored = _StoredKey(
            id=f"key_{secrets.token_hex(8)}",
            tenant=tenant,
            admin=admin,
            created_at=utcnow_iso(),
            revoked_at=None,
            prefix=secret[:_SHOWN_CHARS],
            sha256=_digest(secret),
        )
        who = json.dumps({"key_id": stored.id, "tenant": tenant, "admin": admin})
        with self.redis.pipeline() as pipe:  # both or neither
            pipe.hset(self.keys.api_keys(), stored.id, stored.model_dump_json())
            pipe.hset(self.keys.api_key_hashes(), stored.sha256, who)
            pipe.execute()
        return stored.listed(), secret

    def every(self) -> list[ApiKey]:
        raws = self.redis.hvals(self.keys.api_keys())
        stored = [_StoredKey.model_validate_json(raw) for raw in raws]
        return [k.listed() for k in sorted(stored, key=lambda k: (k.created_at, k.id))]

    def revoke(self, key_id: str) -> ApiKey:
        if key_id.startswith(SECRET_PREFIX):
            # A secret given for an id: not repeated in the error (it may be logged).
            raise KeyNotFound("(a key's secret, not its id)")
        key = self.keys.api_keys()
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, key_id)
                    if raw is None:
                        raise KeyNotFound(key_id)
                    stored = _StoredKey.model_validate_json(raw)
                    if stored.revoked_at is not None:
                        pipe.unwatch()
                        return stored.listed()
                    stored.revoked_at = utcnow_iso()
                    pipe.multi()
                    pipe.hset(key, key_id, stored.model_dump_json())
                    # Its hash entry is what authenticate() finds: gone, the key is refused.
                    pipe.hdel(self.keys.api_key_hashes(), stored.sha256)
                    pipe.delete(self.keys.api_key_rate(key_id))
                    pipe.execute()
                    return stored.listed()
                except redis.WatchError:
                    continue

    def authenticate(self, secret: object) -> Principal:
        raw = self.redis.hget(self.keys.api_key_hashes(), _digest(_well_formed(secret)))
        if raw is None:
            raise Unauthenticated(_REFUSED)
        return Principal(**json.loads(raw))

    def principal(self, key_id: str) -> Principal:
        raw = self.redis.hget(self.keys.api_keys(), key_id)
        if raw is None:
            raise Unauthenticated(_REFUSED)
        stored = _StoredKey.model_validate_json(raw)
        if stored.revoked_at is not None:
            raise Unauthenticated(_REFUSED)
        return Principal(key_id=stored.id, tenant=stored.tenant, admin=stored.admin)

    def admit(
        self, secret: object, rate_per_s: float, burst: int
    ) -> tuple[Principal, float | None]:
        raw, wait = self._admit(
            hashes=self.keys.api_key_hashes(), digest=_digest(_well_formed(secret)),
            bucket_head=self._bucket_head, bucket_tail=self._bucket_tail,
            rate_per_s=rate_per_s, burst=burst,
        )  # fmt: skip
        if not raw:
            raise Unauthenticated(_REFUSED)
        wait_s = float(wait)
        return Principal(**json.loads(raw)), (wait_s if wait_s > 0 else None)

    def take_token(self, key_id: str, rate_per_s: float, burst: int) -> float | None:
        bucket = self.keys.api_key_rate(key_id)
        wait_s = float(self._api_rate(bucket=bucket, rate_per_s=rate_per_s, burst=burst))
        return wait_s if wait_s > 0 else None


@lru_cache(maxsize=8)
def _ring_for(st: JobStore) -> _KeyRing:
    return _KeyRing(st.redis, st.keys.prefix)


def _ring(settings: Settings | None) -> _KeyRing:
    # On the job store's connection pool (one per URL and prefix): the HTTP service needs
    # one pool, not two.
    return _ring_for(store(settings))


def create_key(
    tenant: str, *, admin: bool = False, settings: Settings | None = None
) -> tuple[ApiKey, str]:
    """Make a new API key for tenant.

    Args:
        tenant: whose jobs the key sees and makes (1-64 of letters, digits, `._-`).
        admin: an admin key sees and lists every tenant's jobs.
        settings: defaults to the environment's.

    Returns:
        (the key as listed, its secret): the secret is shown this once and stored nowhere.

    Raises:
        InvalidRequest: naming `tenant`.
    """
    return _ring(settings).create(check_tenant(tenant), admin)


def list_keys(settings: Settings | None = None) -> list[ApiKey]:
    """Every API key, revoked ones too, oldest first (never a secret)."""
    return _ring(settings).every()


def revoke_key(key_id: str, settings: Settings | None = None) -> ApiKey:
    """Revoke an API key: refused from the next request on, by every replica. Revoking a
    revoked key changes nothing.

    Raises:
        KeyNotFound: when no key has that id.
    """
    return _ring(settings).revoke(key_id)


def authenticate(secret: str, settings: Settings | None = None) -> Principal:
    """Who the secret of an API key (the `Bearer` token) belongs to.

    Raises:
        Unauthenticated: when it is missing, unknown, revoked or malformed (one error for
            all, whose message never repeats the secret).
    """
    return _ring(settings).authenticate(secret)


def principal_of(key_id: str, settings: Settings | None = None) -> Principal:
    """Who a key is, by its id (a console session holds the id, never the secret), read
    from Redis on every call like authenticate: a revoked key's sessions end with it.

    Raises:
        Unauthenticated: when no key has that id or it was revoked.
    """
    return _ring(settings).principal(key_id)


def admit(secret: str, settings: Settings | None = None) -> tuple[Principal, float | None]:
    """authenticate() and take_request_token() in one round trip to Redis: the key's
    principal, and None when the request may go, else the seconds to wait (Retry-After).

    Raises:
        Unauthenticated: as authenticate() does.
    """
    s = settings or get_settings()
    return _ring(s).admit(secret, s.api_rate_per_s, s.api_burst)


def take_request_token(principal: Principal, settings: Settings | None = None) -> float | None:
    """Spend one of the key's request tokens: None when the request may go, else the seconds
    to wait (Retry-After) before one is back."""
    s = settings or get_settings()
    return _ring(s).take_token(principal.key_id, s.api_rate_per_s, s.api_burst)
