"""Who is calling: a bearer key of our own (producer/core/keys.py), its per-key request rate,
and what its tenant may see."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producer.core.errors import ApiError, JobNotFound, Unauthenticated
from producer.core.keys import Principal, admit
from producer.core.settings import Settings
from producer.http.calls import on_loop

# Declares the scheme in the OpenAPI document (and /docs' Authorize button); the answer to a
# missing or wrong key is ours (401 in OpenAI's shape), not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="An API key: `videoqueue keys create`.")


def unauthenticated() -> ApiError:
    """The one 401 for every missing, unknown, revoked or malformed key (never echoing it)."""
    return ApiError(
        401,
        "missing or invalid API key: send Authorization: Bearer vq_... "
        "(`videoqueue keys create --tenant NAME`)",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def identify(request: Request, secret: str | None) -> Principal:
    """The key's principal, once its request token is taken.

    Raises:
        ApiError: 401 for a bad key, 429 (with Retry-After) over the key's request rate.
    """
    settings: Settings = request.app.state.settings
    if not secret:
        raise unauthenticated()
    try:
        principal, retry_after_s = await on_loop(admit, secret, settings)
    except Unauthenticated:
        raise unauthenticated() from None
    if retry_after_s is not None:
        raise ApiError(
            429,
            f"too many requests for this key; retry after {retry_after_s:.2f} s",
            code="rate_limit_exceeded",
            type_="requests",
            headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
        )
    return principal


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """FastAPI dependency: the calling key's principal (401 or 429 otherwise)."""
    return await identify(request, credentials.credentials if credentials else None)


def check_owner(owner: str | None, who: Principal, what: str) -> None:
    """Refuse another tenant's job or batch exactly as an unknown one: the caller learns
    nothing of ids that are not theirs. An admin key sees every tenant's.

    Raises:
        JobNotFound: when `who` may not see it.
    """
    if not who.admin and owner != who.tenant:
        raise JobNotFound(what)
