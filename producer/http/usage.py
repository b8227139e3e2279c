"""The usage route: what tenants spent, against their budgets (producer/usage.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from producer.core.keys import Principal
from producer.core.settings import Settings
from producer.http.auth import principal
from producer.http.calls import on_loop
from producer.http.openapi import ERRORS
from producer.usage import TenantUsage, usage

router = APIRouter(tags=["usage"])
Caller = Annotated[Principal, Depends(principal)]


@router.get("/v1/usage", responses=ERRORS, summary="Spent, reserved and remaining per tenant")
async def get_usage(
    request: Request,
    who: Caller,
    tenant: Annotated[
        str | None, Query(description="An admin key's choice of tenant (others see their own).")
    ] = None,
    since: Annotated[
        str | None, Query(description="Charges from this UTC day (an ISO date or time) on.")
    ] = None,
) -> Any:
    """A tenant's key gets its own tenant's usage; an admin key every tenant's (or `tenant`'s).
    Always a list: `{"object": "list", "data": [...]}`."""
    settings: Settings = request.app.state.settings
    chosen = tenant if who.admin else who.tenant
    found: list[TenantUsage] = await on_loop(usage, tenant=chosen, since=since, settings=settings)
    return {"object": "list", "data": [u.model_dump(mode="json") for u in found]}
