"""The sandbox calls back, as the providers it speaks do (README "The sandbox provider").

A create that carries a callback URL where its provider takes one (Replicate's `webhook`,
fal's `fal_webhook` query parameter, `callback_url` elsewhere) is called back when its task
ends (and, for providers that post every change, when it starts running), signed as that
provider signs: Standard Webhooks (Replicate), OpenRouter's HMAC, fal's ED25519 (its key set
served at /_sandbox/jwks.json), or not at all. MiniMax's challenge comes first, during the
create, and a URL that does not echo it within 3 s is never called. Written from the
providers' documentation by hand (worker/dialects/SOURCES.md section 11), not from the
dialect files, so a test checks the mapping against a second reading.

Knobs (config.py): callbacks on; a share lost, duplicated (the same delivery again), forged
(a bad signature; for an unsigned provider, a made-up token), sent for a wrong job (this
task's news to another task's URL); every delivery late by callback_late_s; and, out of
order, a stale "running" update after the final one.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from producer.http.signatures import (
    fal_signature,
    openrouter_signature,
    public_jwk,
    standard_signature,
)

from .speech import SPEECHES
from .state import Phase, Task

if TYPE_CHECKING:
    from .service import Sandbox

# MiniMax wants the challenge echoed within this long.
CHALLENGE_TIMEOUT_S = 3.0
# A delivery that gets no answer in this long counts as failed (Svix's guidance: 15-30 s).
DELIVERY_TIMEOUT_S = 15.0
FAL_KID = "sandbox-fal-1"


@dataclass(frozen=True)
class Caller:
    """How one provider calls back: where the URL is in its create, how it signs, what it
    sends, and whether it posts every change or only the end."""

    field: str  # the create body's field, or "?name" for a query parameter
    scheme: str  # standard-webhooks | hmac-openrouter | ed25519-jwks | none
    every_change: bool = False
    challenge: bool = False


CALLERS: dict[str, Caller] = {
    "replicate": Caller("webhook", "standard-webhooks"),
    "fal": Caller("?fal_webhook", "ed25519-jwks"),
    "openrouter": Caller("callback_url", "hmac-openrouter"),
    "kling": Caller("callback_url", "none", every_change=True),
    "luma": Caller("callback_url", "none", every_change=True),
    "minimax": Caller("callback_url", "none", every_change=True, challenge=True),
    "seedance": Caller("callback_url", "none", every_change=True),
}


def callback_url_of(dialect: str, body: dict[str, Any], query: dict[str, str]) -> str | None:
    """The callback URL a create carries, where the dialect's provider takes one."""
    caller = CALLERS.get(dialect)
    if caller is None:
        return None
    value = query.get(caller.field[1:]) if caller.field.startswith("?") else body.get(caller.field)
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else None


class Callbacks:
    """The sandbox's outgoing callbacks: scheduled on its event loop, counted in its stats
    (`callbacks`: sent, answered_2xx, refused, lost, duplicated, forged, wrong_job, late,
    out_of_order, challenges_echoed, challenges_failed)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        self.fal_key = Ed25519PrivateKey.generate()
        self.urls: dict[str, str] = {}  # task id -> its callback URL
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def _http(self) -> httpx.AsyncClient:
        """One client per event loop the sandbox serves on: making one per delivery loads the
        CA bundle each time, which held the sandbox's loop (its status answers, its downloads)
        for seconds in the benchmark at 200 callbacks. Keeps no idle connection, so nothing
        is left open when the loop ends."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            client = httpx.AsyncClient(
                timeout=DELIVERY_TIMEOUT_S, limits=httpx.Limits(max_keepalive_connections=0)
            )
            self._client = (loop, client)
        return self._client[1]

    def jwks(self) -> dict[str, Any]:
        """The key set fal-style signatures verify with."""
        return {"keys": [public_jwk(self.fal_key, FAL_KID)]}

    async def created(self, task: Task, url: str) -> bool:
        """A task was created with a callback URL: challenge it if the provider does, then
        schedule its callbacks. False when the challenge was not echoed (no callbacks)."""
        cfg = self.sb.config
        caller = CALLERS[cfg.dialect]
        if not cfg.callbacks:
            return True
        if caller.challenge and not await self._challenge(url):
            return False
        self.urls[task.id] = url
        self._spawn(self._run(task, url, caller))
        return True

    def _spawn(self, coro: Any) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

    async def _challenge(self, url: str) -> bool:
        challenge = secrets.token_hex(8)
        try:
            answer = await self._http().post(
                url, json={"challenge": challenge}, timeout=CHALLENGE_TIMEOUT_S
            )
            echoed = answer.is_success and answer.json().get("challenge") == challenge
        except (httpx.HTTPError, ValueError, AttributeError):
            echoed = False
        self.sb.state.count_in("callbacks", "challenges_echoed" if echoed else "challenges_failed")
        return echoed

    async def _run(self, task: Task, url: str, caller: Caller) -> None:
        sb, cfg = self.sb, self.sb.config
        if task.ends_at is None:
            return  # stuck: it never ends, and never calls
        if caller.every_change and task.queued_s > 0:
            await self._sleep_until(task.created_at + task.queued_s)
            await self._send(task, url, caller, Phase.RUNNING)
        await self._sleep_until(task.ends_at + cfg.callback_late_s)
        if cfg.callback_late_s:
            sb.state.count_in("callbacks", "late")
        final = task.phase(sb.clock())
        await self._send(task, url, caller, final)
        if cfg.callback_out_of_order:
            sb.state.count_in("callbacks", "out_of_order")
            await self._send(task, url, caller, Phase.RUNNING)

    async def _sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.sb.clock()))

    async def _send(self, task: Task, url: str, caller: Caller, phase: Phase) -> None:
        cfg, state = self.sb.config, self.sb.state
        if state.roll("callback_lost", cfg.callback_lost_rate):
            state.count_in("callbacks", "lost")
            return
        forged = state.roll("callback_forged", cfg.callback_forged_rate)
        body, headers = self.delivery(task, phase, forged=forged)
        target = url
        if state.roll("callback_wrong_job", cfg.callback_wrong_job_rate):
            others = [u for t, u in self.urls.items() if t != task.id]
            if others:
                state.count_in("callbacks", "wrong_job")
                target = others[0]
        if forged:
            state.count_in("callbacks", "forged")
            if caller.scheme == "none":
                target = _with_token(target, secrets.token_urlsafe(24))
        times = 2 if state.roll("callback_duplicate", cfg.callback_duplicate_rate) else 1
        if times == 2:
            state.count_in("callbacks", "duplicated")
        for _ in range(times):
            try:
                answer = await self._http().post(target, content=body, headers=headers)
                state.count_in("callbacks", "answered_2xx" if answer.is_success else "refused")
            except httpx.HTTPError:
                state.count_in("callbacks", "failed")
            state.count_in("callbacks", "sent")

    def delivery(
        self, task: Task, phase: Phase, *, forged: bool = False
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a callback about task in phase, signed as the provider
        signs (forged: with another secret or key)."""
        caller = CALLERS[self.sb.config.dialect]
        body = json.dumps(self._body(task, phase)).encode()
        return body, self._headers(task, phase, caller, body, forged=forged)

    def _body(self, task: Task, phase: Phase) -> dict[str, Any]:
        dialect = self.sb.config.dialect
        speech = SPEECHES[dialect]
        url = None  # a callback carries news, not the file: the poll fetches it
        shown = speech.render(task, phase, task.progress(self.sb.clock()), url)
        if dialect == "openrouter":
            kind = {Phase.COMPLETED: "completed", Phase.FAILED: "failed"}.get(phase, "in_progress")
            return {"type": f"video.generation.{kind}", "created_at": int(time.time()),
                    "data": shown}  # fmt: skip
        if dialect == "fal":
            ok = phase is Phase.COMPLETED
            return {"request_id": task.id, "gateway_request_id": task.id,
                    "status": "OK" if ok else "ERROR", "payload": {}}  # fmt: skip
        if dialect == "kling":
            data: dict[str, Any] = shown["data"]
            return data
        return shown

    def _headers(
        self, task: Task, phase: Phase, caller: Caller, body: bytes, *, forged: bool
    ) -> dict[str, str]:
        cfg = self.sb.config
        now = int(time.time())
        headers = {"content-type": "application/json"}
        secret = cfg.webhook_secret if not forged else "whsec_" + "Zm9yZ2VkLXNlY3JldC1ieXRlcw=="
        if caller.scheme == "standard-webhooks":
            msg_id = f"msg_{task.id}_{phase.value}"  # the same on a retry
            signature = standard_signature(secret, msg_id, now, body)
            headers.update({"webhook-id": msg_id, "webhook-timestamp": str(now),
                            "webhook-signature": signature})  # fmt: skip
        elif caller.scheme == "hmac-openrouter":
            headers["x-openrouter-signature"] = openrouter_signature(secret, now, body)
        elif caller.scheme == "ed25519-jwks":
            signer = self.fal_key if not forged else Ed25519PrivateKey.generate()
            user = "sandbox-user"
            headers.update({"x-fal-webhook-request-id": task.id, "x-fal-webhook-user-id": user,
                            "x-fal-webhook-timestamp": str(now),
                            "x-fal-webhook-signature": fal_signature(signer, task.id, user,
                                                                     now, body)})  # fmt: skip
        return headers


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rsplit("/", 1)[0] + "/" + token
    return urlunsplit(parts._replace(path=path))
