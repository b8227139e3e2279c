"""The character routes: one call to the provider each (producer/characters.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse

from producer.characters import character_tenant, create_character, get_character
from producer.core.errors import ApiError, InvalidRequest, JobNotFound, ProviderError
from producer.core.keys import Principal
from producer.core.settings import Settings
from producer.http.auth import check_owner, principal
from producer.http.bodies import read_json
from producer.http.calls import in_thread, on_loop
from producer.http.openapi import PROVIDER_ERRORS
from producer.http.shapes import Character
from producer.http.videos import invalid_request

router = APIRouter(tags=["characters"])
Caller = Annotated[Principal, Depends(principal)]


@router.post("/sora/v1/characters", response_model=Character, responses=PROVIDER_ERRORS,
             summary="Create a character at the provider")  # fmt: skip
async def create_character_route(request: Request, who: Caller) -> Any:
    settings: Settings = request.app.state.settings
    body = await read_json(request, settings.http_max_body_bytes)
    try:
        answer = await in_thread(
            lambda: create_character(body, tenant=who.tenant, settings=settings)
        )
    except InvalidRequest as e:
        raise invalid_request(e) from None
    except ProviderError as e:
        raise _provider_error(e) from None
    return JSONResponse(answer)


@router.get(
    "/sora/v1/characters/{character_id}", response_model=Character, responses=PROVIDER_ERRORS
)
async def retrieve_character(request: Request, character_id: str, who: Caller) -> Any:
    settings: Settings = request.app.state.settings
    missing = ApiError(404, f"no character with id {character_id!r}", code="not_found",
                       param="character_id")  # fmt: skip
    owner = await on_loop(lambda: character_tenant(character_id, settings=settings))
    try:
        # Another tenant's character answers as an unknown one (so does one made outside
        # videoqueue, which has no tenant, but to an admin key).
        check_owner(owner, who, character_id)
        answer = await in_thread(lambda: get_character(character_id, settings=settings))
    except JobNotFound:
        raise missing from None
    except ProviderError as e:
        if e.status_code in (400, 404):
            raise missing from None
        raise _provider_error(e) from None
    return JSONResponse(answer)


def _provider_error(e: ProviderError) -> ApiError:
    # The provider's refusal of a request is the caller's 400; its failure, a 502.
    if e.status_code is not None and 400 <= e.status_code < 500 and e.status_code != 429:
        return ApiError(400, str(e), code="provider_refused")
    return ApiError(502, str(e), code="provider_unavailable", type_="server_error",
                    headers={"Retry-After": "5"})  # fmt: skip
