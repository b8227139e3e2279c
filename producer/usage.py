"""What tenants spent: the ledger's figures per tenant and provider, against their budgets.

`videoqueue usage` prints these and the HTTP service's `GET /v1/usage` answers them (a
tenant's key its own, an admin key every tenant's).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from pydantic import BaseModel, Field

from producer.core.errors import InvalidRequest
from producer.core.settings import Settings
from producer.core.store import store
from producer.core.tenant_policies import BudgetPeriod, get_policy, list_policies
from producer.core.tenants import check_tenant


class ProviderUsage(BaseModel):
    """What one tenant's jobs were charged at one provider."""

    charged_usd: float


class TenantUsage(BaseModel):
    """One tenant's money, in US dollars."""

    tenant: str
    # Charged for its jobs' provider tasks: ever, or from `since` (a UTC day) on.
    charged_usd: float
    # Held by its unfinished jobs (their estimates).
    reserved_usd: float
    # Its budget per budget_period (None: no limit), what it spent in the current period
    # (UTC calendar day or month, or ever), and what is left: budget - spent - reserved.
    budget_usd: float | None
    budget_period: BudgetPeriod
    spent_usd: float
    remaining_usd: float | None
    since: str | None = None
    # charged_usd by provider (a provider's name; "(none)" never charges).
    providers: dict[str, ProviderUsage] = Field(default_factory=dict)


def since_day(since: str | date | datetime | None) -> str | None:
    """The UTC day ("2026-12-01") a `since` starts on: a date, a time (its UTC day), or ISO
    text of either.

    Raises:
        InvalidRequest: naming `since`.
    """
    if since is None:
        return None
    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest.of_field("since", "an ISO 8601 date or time") from None
    if isinstance(since, datetime):
        since = (since if since.tzinfo else since.replace(tzinfo=UTC)).astimezone(UTC).date()
    return since.isoformat()


def usage(
    *,
    tenant: str | None = None,
    since: str | date | datetime | None = None,
    settings: Settings | None = None,
) -> list[TenantUsage]:
    """Each tenant's money (the tenant's alone when named), by tenant name.

    Args:
        tenant: one tenant (it need not have spent anything); None: every tenant the ledger
            has seen or a policy names.
        since: count charges from this UTC day on (days are the ledger's smallest period);
            None: ever. Reserved, spent and remaining are always now's.
        settings: defaults to the environment's.

    Raises:
        InvalidRequest: naming `tenant` or `since`.
    """
    ledger = store(settings).ledger
    day = since_day(since)
    if tenant is not None:
        names = [check_tenant(tenant)]
    else:
        seen = {name for name, _ in ledger.tenants()}
        names = sorted(seen | {p.tenant for p in list_policies(settings)})
    out = []
    for money in ledger.money(names, day):
        policy = get_policy(money.tenant, settings)
        spent = {"day": money.spent_day_usd, "month": money.spent_month_usd}.get(
            policy.budget_period, money.charged_usd
        )
        remaining = (
            None
            if policy.budget_usd is None
            else round(policy.budget_usd - spent - money.reserved_usd, 6)
        )
        out.append(
            TenantUsage(
                tenant=money.tenant,
                charged_usd=money.charged_since_usd,
                reserved_usd=money.reserved_usd,
                budget_usd=policy.budget_usd,
                budget_period=policy.budget_period,
                spent_usd=spent,
                remaining_usd=remaining,
                since=day,
                providers={k: ProviderUsage(charged_usd=v) for k, v in money.providers.items()},
            )
        )
    return out
