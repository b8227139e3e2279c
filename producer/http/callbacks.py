"""The callback ingress: `POST /callbacks/{provider}/{token}`, where providers call back.

A callback is news, never the answer (README "Provider callbacks"). One that is accepted
makes its job's next poll due now (Schedule.hasten), and that poll, a status query like any
other, is what moves the job: a forged or mistaken callback costs at most one status query,
and the file is fetched and checked as it always is. A signed callback that carries the final
answer is not taken as it either, for that reason and because most providers' callbacks lack
what the poll reads (MiniMax's file URL takes a second call, fal's result another).

Accepted only when, in this order: the body is at most callback_max_body_bytes (read as it
streams, never past that); the token in the path is one a create of this provider carried
(only its sha256 is stored); a MiniMax-style challenge is echoed at once; the signature
verifies, within WINDOW_S of its timestamp (a provider that does not sign: the token alone);
the task id it names is the job's; its delivery id was not seen before. Anything else is
refused with a 4xx, changes nothing, and is counted by reason
(videoqueue_callbacks_refused_total). The service never runs a step itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, Request
from prometheus_client import Counter, generate_latest
from starlette.responses import JSONResponse, Response

from producer.core.callbacks import (
    TOKEN_GRACE_S,
    CallbackSpec,
    CallbackTokens,
    Signature,
    callback_secret,
    callback_spec,
)
from producer.core.errors import ApiError, JobNotFound
from producer.core.providers import Provider, api_key, providers
from producer.core.records import JobStatus
from producer.core.settings import Settings
from producer.core.store import JobStore, store
from producer.http.bodies import read_body
from producer.http.calls import on_loop
from producer.http.signatures import (
    Refused,
    UnknownKey,
    jwk_key,
    verify_fal,
    verify_jwt,
    verify_openrouter,
    verify_standard,
)

log = logging.getLogger("videoqueue.http.callbacks")

router = APIRouter(prefix="/callbacks", include_in_schema=False)

REFUSED = Counter(
    "videoqueue_callbacks_refused_total",
    "Provider callbacks refused, by provider and reason.",
    ["provider", "reason"],
)
ACCEPTED = Counter(
    "videoqueue_callbacks_accepted_total",
    "Provider callbacks accepted, by provider and what they did: hastened (the job's next "
    "poll made due now), noted (nothing to do), handshake (a challenge echoed).",
    ["provider", "action"],
)

# A key set is fetched again on an unknown key id at most this often (a flood of forged
# key ids must not become a flood of fetches), and in any case after KEYS_MAX_AGE_S.
KEYS_REFRESH_S = 30.0
KEYS_MAX_AGE_S = 24 * 3600.0
# A fetched signing secret (Replicate's) is fetched again after this long.
SECRET_MAX_AGE_S = 3600.0
# The one outbound call the ingress may make per callback (a key set, a secret) gives up
# after this long: MiniMax wants its answer within 3 s (its challenge needs no call).
FETCH_TIMEOUT_S = 2.0
# What a token looks like (secrets.token_urlsafe(24)): anything else is not looked up.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
# Job statuses in which a poll may still learn something.
_AT_PROVIDER = {JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.PROCESSING}


@router.post("/{provider}/{token}")
async def receive(provider: str, token: str, request: Request) -> Response:
    """A provider's callback (see the module docstring)."""
    ingress = _ingress(request)
    label = provider if provider in ingress.providers else "unknown"
    try:
        return await ingress.receive(provider, token, request)
    except Refused as e:
        REFUSED.labels(provider=label, reason=e.reason).inc()
        log.info("callback refused: provider=%s reason=%s", label, e.reason)
        error = {"message": str(e), "type": "invalid_request_error", "code": e.reason,
                 "param": None}  # fmt: skip
        return JSONResponse({"error": error}, status_code=e.status)


@router.get("/metrics")
async def metrics() -> Response:
    """The callback counters (and this process's others), in Prometheus's text format."""
    return Response(generate_latest(), media_type="text/plain; version=0.0.4")


def _ingress(request: Request) -> Ingress:
    state = request.app.state
    if getattr(state, "callback_ingress", None) is None:
        state.callback_ingress = Ingress(state.settings)
    ingress: Ingress = state.callback_ingress
    return ingress


@dataclass
class Ingress:
    """What the callback route keeps between requests: the providers, their callback specs,
    fetched secrets and key sets."""

    settings: Settings
    providers: dict[str, Provider] = field(init=False)
    store: JobStore = field(init=False)
    tokens: CallbackTokens = field(init=False)
    http: httpx.AsyncClient = field(init=False)
    _keys: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _secrets: dict[str, tuple[float, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.providers = {p.name: p for p in providers(self.settings)}
        self.store = store(self.settings)
        self.tokens = CallbackTokens(self.store.redis, self.store.keys)
        self.http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)

    def spec(self, provider: Provider) -> CallbackSpec | None:
        user_dir = str(self.settings.dialects_dir) if self.settings.dialects_dir else None
        return callback_spec(provider.dialect, user_dir)

    async def receive(self, name: str, token: str, request: Request) -> Response:
        try:
            body = await read_body(request, self.settings.callback_max_body_bytes)
        except ApiError as e:
            raise Refused("too_large", e.message, 413) from None
        holder = await on_loop(self.tokens.holder, token) if _TOKEN.match(token) else None
        provider = self.providers.get(name)
        spec = self.spec(provider) if provider is not None else None
        if holder is None or holder[0] != name or provider is None or spec is None:
            raise Refused("unknown_token", "no such callback URL", 404)
        job_id = holder[1]
        if spec.handshake == "challenge" and (challenge := _challenge(body)) is not None:
            # MiniMax: echoed at once (its limit is 3 s), before anything else is asked.
            ACCEPTED.labels(provider=name, action="handshake").inc()
            return JSONResponse({"challenge": challenge})
        delivery = await self.verify(provider, spec, request, body)
        event = _json(body)
        task_id = _first(event, spec.id)
        if task_id is None:
            raise Refused("bad_body", "the callback names no task", 400)
        try:
            record = await on_loop(self.store.get, job_id)
        except JobNotFound:
            raise Refused("unknown_token", "no such callback URL", 404) from None
        if record.provider_task_id and not _same_task(record.provider_task_id, str(task_id)):
            raise Refused("wrong_job", "the callback is about another task", 409)
        ttl_s = self.settings.deadline_s + TOKEN_GRACE_S
        if not await on_loop(self.tokens.first_delivery, name, delivery, ttl_s):
            raise Refused("replay", "this delivery was received already", 409)
        action = "noted"
        if record.status in _AT_PROVIDER and spec.ends_with(_first(event, spec.status)):
            await on_loop(self.store.schedule.hasten, job_id)
            action = "hastened"
        ACCEPTED.labels(provider=name, action=action).inc()
        return JSONResponse({"ok": True, "action": action})

    async def verify(
        self, provider: Provider, spec: CallbackSpec, request: Request, body: bytes
    ) -> str:
        """The delivery's id, once its signature verifies (an unsigned one: its body's hash).

        Raises:
            Refused: bad_signature, stale_timestamp, or no_secret (503: none configured and
                none could be fetched).
        """
        headers, now_s = request.headers, time.time()
        scheme = spec.signature
        if scheme is Signature.NONE:
            return "body:" + hashlib.sha256(body).hexdigest()
        if scheme.keyed:
            secret = await self.secret(provider, spec)
            check = verify_standard if scheme is Signature.STANDARD else verify_openrouter
            return check(secret, headers, body, now_s)
        url = self.settings.callback_keys_urls.get(provider.dialect) or spec.keys_url or ""
        for refresh in (False, True):
            keys = await self.key_set(url, refresh=refresh)
            try:
                if scheme is Signature.ED25519:
                    return verify_fal(list(keys.values()), headers, body, now_s)
                return verify_jwt(keys, headers, body, now_s)
            except UnknownKey:
                if refresh:
                    raise
        raise AssertionError("unreachable")

    async def secret(self, provider: Provider, spec: CallbackSpec) -> str:
        """The provider's signing secret: the setting, else fetched from its secret_route
        with its API key (cached SECRET_MAX_AGE_S). Never logged."""
        configured = callback_secret(self.settings, provider.dialect)
        if configured is not None and configured.get_secret_value():
            return configured.get_secret_value()
        cached = self._secrets.get(provider.name)
        if cached is not None and time.monotonic() - cached[0] < SECRET_MAX_AGE_S:
            return cached[1]
        if spec.secret_route is None:
            raise Refused("no_secret", f"no signing secret configured for {provider.name!r}", 503)
        key = api_key(provider, self.settings).get_secret_value()
        try:
            answer = await self.http.get(provider.base_url.rstrip("/") + spec.secret_route,
                                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            fetched = answer.json().get("key") if answer.is_success else None
        except (httpx.HTTPError, ValueError, AttributeError):
            fetched = None
        if not isinstance(fetched, str) or not fetched:
            raise Refused("no_secret", f"the signing secret of {provider.name!r} could not be "
                          "fetched", 503)  # fmt: skip
        self._secrets[provider.name] = (time.monotonic(), fetched)
        return fetched

    async def key_set(self, url: str, *, refresh: bool = False) -> dict[str, Any]:
        """The published keys at url by key id (cached; fetched again when refresh is asked
        and the cache is older than KEYS_REFRESH_S)."""
        cached = self._keys.get(url)
        age_s = time.monotonic() - cached[0] if cached is not None else None
        if (
            cached is not None
            and age_s is not None
            and age_s < KEYS_MAX_AGE_S
            and not (refresh and age_s >= KEYS_REFRESH_S)
        ):
            return cached[1]
        try:
            answer = await self.http.get(url)
            jwks = answer.json() if answer.is_success else {}
        except (httpx.HTTPError, ValueError):
            jwks = {}
        found = jwks.get("keys") if isinstance(jwks, dict) else None
        keys = {}
        for i, jwk in enumerate(found if isinstance(found, list) else []):
            key = jwk_key(jwk) if isinstance(jwk, dict) else None
            if key is not None:
                keys[str(jwk.get("kid") or f"#{i}")] = key
        if not keys and cached is not None:
            return cached[1]  # a failed fetch keeps the keys we had
        self._keys[url] = (time.monotonic(), keys)
        return keys


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise Refused("bad_body", "the callback's body is not JSON", 400) from None


def _challenge(body: bytes) -> str | None:
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = event.get("challenge") if isinstance(event, dict) else None
    return value if isinstance(value, str) else None


def _first(event: Any, paths: list[str]) -> Any:
    """The value at the first of the dotted paths present in event."""
    for path in paths:
        place = event
        for step in path.split("."):
            place = place.get(step) if isinstance(place, dict) else None
        if place is not None:
            return place
    return None


def _same_task(recorded: str, sent: str) -> bool:
    """Whether a callback's task id is the job's: the same, or the last part of the
    recorded one (fal's is its response_url's path, Veo's an operation's name)."""
    return recorded == sent or recorded.endswith("/" + sent)
