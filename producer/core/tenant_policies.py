"""What each tenant may use: its fair-share weight, its ceilings and its budget.

The one writer of the `tenant:*:policy` key family and of the set of tenants that reserve
slots (`fair:reserving`, which the submit claim reads: producer/core/names.py). A policy is a
Redis hash so that the Lua scripts that claim provider slots and reserve money read its
fields directly (HGET), on the same connection and in the same script as the claim.

A tenant without a stored policy has the defaults: weight 1, no ceiling, nothing reserved,
no budget. Setting a field to its default leaves the others as they were.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.core.errors import InvalidRequest
from producer.core.names import Keys
from producer.core.settings import Settings
from producer.core.store import JobStore, store
from producer.core.tenants import check_tenant

BudgetPeriod = Literal["day", "month", "total"]


class TenantPolicy(BaseModel):
    """A tenant's share of provider slots and its spending limit."""

    model_config = ConfigDict(extra="forbid")

    # Its share of scarce slots and rate tokens against other tenants with due work.
    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    # A ceiling on its jobs at providers, across every provider (None: none).
    max_in_flight: int | None = Field(default=None, ge=0)
    # Slots held back for it, while it has due work, on every provider account.
    reserved: int = Field(default=0, ge=0)
    # What it may spend (reserved + charged) per budget_period, in US dollars (None: no limit).
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: BudgetPeriod = "total"


class TenantPolicyView(TenantPolicy):
    """A policy as shown: with its tenant's name."""

    tenant: str


# Hash fields are strings; an absent field (or "") means the default.
def _to_hash(policy: TenantPolicy) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in policy.model_dump().items()}


def _from_hash(raw: dict[bytes, bytes]) -> TenantPolicy:
    fields = {k.decode(): v.decode() for k, v in raw.items() if v not in (b"",)}
    return TenantPolicy.model_validate(fields)


class _Policies:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.keys = Keys(prefix)

    def get(self, tenant: str) -> TenantPolicy:
        return _from_hash(self.redis.hgetall(self.keys.tenant_policy(tenant)))  # type: ignore[arg-type]

    def put(self, tenant: str, policy: TenantPolicy) -> None:
        with self.redis.pipeline() as pipe:  # all or nothing
            pipe.hset(self.keys.tenant_policy(tenant), mapping=_to_hash(policy))  # type: ignore[arg-type]
            pipe.sadd(self.keys.tenants(), tenant)
            # The submit claim reads the reservations of these tenants only (few, by nature).
            if policy.reserved:
                pipe.sadd(self.keys.fair_reserving(), tenant)
            else:
                pipe.srem(self.keys.fair_reserving(), tenant)
            pipe.execute()

    def names(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(self.keys.tenants()))  # type: ignore[union-attr]


@lru_cache(maxsize=8)
def _policies_for(st: JobStore) -> _Policies:
    return _Policies(st.redis, st.keys.prefix)


def _policies(settings: Settings | None) -> _Policies:
    return _policies_for(store(settings))


def get_policy(tenant: str, settings: Settings | None = None) -> TenantPolicy:
    """The tenant's policy (the defaults when none was set)."""
    return _policies(settings).get(check_tenant(tenant))


def set_policy(
    tenant: str, changes: dict[str, Any], settings: Settings | None = None
) -> TenantPolicy:
    """Change some fields of a tenant's policy and keep the rest; returns the new policy.

    Raises:
        InvalidRequest: naming the field, when a value is out of range or unknown; nothing
            is written then.
    """
    name = check_tenant(tenant)
    policies = _policies(settings)
    current = policies.get(name).model_dump()
    try:
        policy = TenantPolicy.model_validate({**current, **changes})
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "policy"
        raise InvalidRequest.of_field(field, first["msg"]) from None
    policies.put(name, policy)
    return policy


def list_policies(settings: Settings | None = None) -> list[TenantPolicyView]:
    """Every tenant a policy was set for, by name."""
    policies = _policies(settings)
    return [
        TenantPolicyView(tenant=name, **policies.get(name).model_dump())
        for name in policies.names()
    ]
