"""Console sign-ins: the one writer of the `console:session:*` key family.

The browser holds a random session id in an HttpOnly, SameSite=Strict cookie (Secure over
https); Redis holds, under the id's sha256 (a copy of Redis gives no live session), the key
id, never the key's secret, and the session's CSRF token, expiring after
VIDEOQUEUE_CONSOLE_SESSION_TTL_S. Every request reads the key again by its id
(producer/core/keys.py principal_of): revoking a key ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from producer.core.errors import Unauthenticated
from producer.core.keys import Principal, principal_of
from producer.core.settings import Settings
from producer.core.store import store

COOKIE = "vq_console"
# Before sign-in: the token the sign-in form carries (a login CSRF guard).
SIGNIN_COOKIE = "vq_console_signin"
_TOKEN_BYTES = 32


@dataclass(frozen=True)
class Session:
    """A signed-in console user: who (the key's principal) and the session's CSRF token."""

    principal: Principal
    csrf: str


def new_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def open_session(settings: Settings, who: Principal) -> tuple[str, Session]:
    """A new session for who: (the cookie's value, the session)."""
    session_id, csrf = new_token(), new_token()
    st = store(settings)
    body = json.dumps({"key_id": who.key_id, "csrf": csrf})
    ttl_ms = int(settings.console_session_ttl_s * 1000)
    st.redis.set(st.keys.console_session(_digest(session_id)), body, px=ttl_ms)
    return session_id, Session(who, csrf)


def read_session(settings: Settings, session_id: str | None) -> Session | None:
    """The session of a cookie; None when there is none, it expired, or its key was revoked."""
    if not session_id or len(session_id) > 100:
        return None
    st = store(settings)
    raw = st.redis.get(st.keys.console_session(_digest(session_id)))
    if raw is None:
        return None
    fields = json.loads(raw)
    try:
        who = principal_of(str(fields["key_id"]), settings)
    except Unauthenticated:
        return None
    return Session(who, str(fields["csrf"]))


def close_session(settings: Settings, session_id: str | None) -> None:
    if session_id:
        st = store(settings)
        st.redis.delete(st.keys.console_session(_digest(session_id)))


def tokens_match(expected: str | None, given: str | None) -> bool:
    """A CSRF token compared in constant time (an absent one never matches)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode(errors="replace"))


def set_cookie(
    request: Request, response: Response, name: str, value: str, max_age_s: float
) -> None:
    """An HttpOnly, SameSite=Strict cookie for /console, Secure when served over https."""
    settings: Settings = request.app.state.settings
    secure = request.url.scheme == "https" or (settings.http_public_url or "").startswith("https:")
    response.set_cookie(
        name, value, max_age=int(max_age_s), path="/console", httponly=True,
        samesite="strict", secure=secure,
    )  # fmt: skip
