"""The ledger: what each tenant's jobs cost, held against its budget and charged exactly once.

The one writer of the `ledger*` key family (producer/core/names.py). Its Lua is
lua/ledger.lua, a fragment of the scripts that create a job (create.lua) or release a batch
(release_batch.lua), so that money is reserved in the very step that writes the job, and
lua/ledger_move.lua, queued by the store in the transaction that writes a job's change
(JobStore.update_many), so that money moves exactly when the change is written, once.

The rules, which the README's "Budgets and the ledger" states for users:

- **Estimate**: the price table's cost of the request (producer/core/providers.py
  ModelPrice) at the priciest provider it may go to. A provider without a price for it makes
  the estimate unknown: refused for a tenant with a budget; a tenant without one reserves
  the priced providers' highest (0 if none has a price).
- **Reserve** at enqueue, in the script that writes the job (a batch: in the script that
  releases it, for the whole batch at once): refused with BudgetExceeded when spent in the
  budget's period + reserved + the estimate would pass budget_usd.
- **Settle** whenever a record is written ended (settle()): its reservation is released in
  full, and its current provider task is charged what it costs (the provider's reported cost,
  else the price table's at the provider it went to) minus what the ledger charged for that
  task already. A job that never reached a provider costs nothing; one whose create may have
  reached one (an uncertain create) is charged, since the provider may bill it. A write that
  changes nothing moves nothing, so a step run twice settles once, and a retried job adds
  only what a new provider task costs.

Amounts in Redis are whole micro-dollars (exact sums); records and answers show US dollars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from producer.core.errors import BudgetExceeded, InvalidRequest
from producer.core.names import Keys
from producer.core.providers import ModelPrice, Provider, candidates, providers
from producer.core.records import JobRecord, utcnow_iso
from producer.core.requests import ASPECT_RATIOS, VideoRequest
from producer.core.scripts import Script
from producer.core.settings import Settings

MICROS_PER_USD = 1_000_000
# Where a charge of a job with no provider is kept (one that never reached one costs 0).
NO_PROVIDER = "(none)"
# The label of the tenants summed together beyond the top ones (metrics). A tenant's name has
# no parentheses, so none is called this.
OTHER = "(other)"


def micros(usd: float) -> int:
    """usd as whole micro-dollars (the ledger's unit in Redis)."""
    return round(usd * MICROS_PER_USD)


def usd(amount: int | float) -> float:
    """Micro-dollars as US dollars, rounded to the micro-dollar."""
    return round(amount / MICROS_PER_USD, 6)


# --- prices (pure) ---


def resolution(request: VideoRequest) -> str | None:
    """The request's size as "WxH" (its aspect ratio's size); None when it names none."""
    if request.size is not None:
        return request.size
    if request.aspect_ratio is not None:
        width, height = ASPECT_RATIOS[request.aspect_ratio]
        return f"{width}x{height}"
    return None


def price_usd(price: ModelPrice, request: VideoRequest) -> float | None:
    """What one task of the request costs at this price; None when the price's table by
    resolution has neither the request's size nor "*". A request naming no size is priced at
    the table's highest (the provider picks the size: never under-reserved)."""
    per_job = price.usd_per_job is not None
    basis = price.usd_per_job if per_job else price.usd_per_second
    if isinstance(basis, dict):
        size = resolution(request)
        amount = max(basis.values()) if size is None else basis.get(size, basis.get("*"))
    else:
        amount = basis
    if amount is None:
        return None
    seconds = request.total_duration_s or price.default_seconds
    return round(amount if per_job else amount * seconds, 6)


def task_price_usd(provider: Provider, request: VideoRequest) -> float | None:
    """What a task of the request costs at provider by its price table (None: no price)."""
    price = provider.price_of(request.model)
    return None if price is None else price_usd(price, request)


@dataclass(frozen=True)
class Estimate:
    """A request's estimated cost: the most any provider it may go to would charge."""

    usd: float
    # The first provider it may go to that has no price for it (the estimate is then unknown).
    unpriced_at: str | None = None

    @property
    def priced(self) -> bool:
        return self.unpriced_at is None


def estimate(request: VideoRequest, settings: Settings) -> Estimate:
    """The request's estimate over every provider it may go to.

    Raises:
        InvalidRequest: naming `provider` or `model`, when no provider may take it.
    """
    by_name = {p.name: p for p in providers(settings)}
    most, unpriced = 0.0, None
    for name in candidates(request, settings):
        amount = task_price_usd(by_name[name], request)
        if amount is None:
            unpriced = unpriced or name
        else:
            most = max(most, amount)
    return Estimate(most, unpriced)


# --- settling a job (pure) ---


def reaches_provider(record: JobRecord) -> bool:
    """Whether the job's current run has a provider task, or a create that may have made one:
    what the provider may bill."""
    return record.provider_task_id is not None or record.uncertain_provider() is not None


def settle(record: JobRecord) -> None:
    """Settle an ended record in place: its reservation released, its current task charged
    what it costs less what the ledger charged for that task already (so settling twice
    changes nothing, and a task found cheaper or dearer later is corrected by the difference).
    """
    record.cost.reserved_usd = 0.0
    bill = record.billing
    cost = 0.0
    if reaches_provider(record):
        cost = bill.reported_usd if bill.reported_usd is not None else (bill.price_usd or 0.0)
    if cost != bill.charged_usd:
        record.cost.charged_usd = round(record.cost.charged_usd + cost - bill.charged_usd, 6)
        bill.charged_usd = round(cost, 6)


def new_task(record: JobRecord) -> None:
    """The job will ask a provider for a new task (an operator's resubmission): what the old
    one cost stays charged, the new one starts from nothing."""
    bill = record.billing
    bill.price_usd = bill.reported_usd = None
    bill.charged_usd = 0.0
    bill.usage_counted = {}
    record.usage = None


def reserve(record: JobRecord, amount_usd: float) -> None:
    """Hold amount_usd for the job's run (enqueue, or an operator's retry)."""
    record.cost.reserved_usd = round(amount_usd, 6)
    record.billing.estimate_usd = round(amount_usd, 6)


# --- Redis ---


@dataclass
class TenantMoney:
    """One tenant's money as the ledger holds it, in US dollars."""

    tenant: str
    reserved_usd: float
    charged_usd: float  # ever
    spent_day_usd: float  # today (UTC)
    spent_month_usd: float  # this month (UTC)
    charged_since_usd: float  # from since_day on (ever, without one)
    providers: dict[str, float] = field(default_factory=dict)  # charged at each, since_day on


class Ledger:
    """The ledger's keys on one Redis, under one prefix."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._move = Script(client, "ledger_move")

    def reservation_keys(self, tenant: str) -> dict[str, str]:
        """The keys a script that reserves for tenant takes (lua/ledger.lua's)."""
        return {
            "ledger": self.keys.ledger(tenant),
            "policy": self.keys.tenant_policy(tenant),
            "ledger_tenants": self.keys.ledger_tenants(),
            "ledger_totals": self.keys.ledger_totals(),
        }

    def move(self, pipe: Any, before: tuple[float, float], record: JobRecord) -> None:
        """Queue on pipe (the transaction writing record) the money its change moved: the
        difference between before (reserved_usd, charged_usd) and its cost now."""
        reserve = micros(record.cost.reserved_usd) - micros(before[0])
        charge = micros(record.cost.charged_usd) - micros(before[1])
        if reserve or charge:
            self._move(
                ledger=self.keys.ledger(record.tenant),
                tenants=self.keys.ledger_tenants(),
                totals=self.keys.ledger_totals(),
                tenant=record.tenant,
                reserve=reserve,
                charge=charge,
                provider=record.provider or NO_PROVIDER,
                client=pipe,
            )

    def check(self, tenant: str, estimate: Estimate, what: str) -> None:
        """Refuse now what the reserving script would refuse (a batch, before any of it is
        written; an operator's retry): the same rule, read in Python. Not atomic: the
        script's own check is the guarantee.

        Raises:
            BudgetExceeded, InvalidRequest: as refused() says.
        """
        budget, period = self.redis.hmget(
            self.keys.tenant_policy(tenant), ["budget_usd", "budget_period"]
        )
        if not budget:
            return
        period_s = _text(period or b"") or "total"
        today = utcnow_iso()[:10]
        field = {"day": f"d:{today}", "month": f"m:{today[:7]}"}.get(period_s, "charged")
        spent, reserved = (int(v or 0) for v in self.redis.hmget(self.keys.ledger(tenant),
                                                                  [field, "reserved"]))  # fmt: skip
        limit = micros(float(_text(budget)))
        if not estimate.priced:
            raise refused(["unpriced", limit, spent, reserved, period_s], tenant, estimate, what)
        if spent + reserved + micros(estimate.usd) > limit:
            raise refused(["budget", limit, spent, reserved, period_s], tenant, estimate, what)

    def tenants(self) -> list[tuple[str, float]]:
        """Every tenant the ledger has seen, with what it was charged, the most first."""
        found: Any = self.redis.zrevrange(self.keys.ledger_tenants(), 0, -1, withscores=True)
        return [(_text(name), usd(score)) for name, score in found]

    def top(self, n: int) -> dict[str, tuple[float, float]]:
        """(charged, reserved) of the n tenants charged most, by name, and of the rest summed
        under OTHER: a label set of n + 1 values however many tenants there are (metrics)."""
        found: Any = self.redis.zrevrange(self.keys.ledger_tenants(), 0, n - 1, withscores=True)
        names = [_text(name) for name, _ in found]
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.keys.ledger(name), "reserved")
            pipe.hmget(self.keys.ledger_totals(), ["charged", "reserved"])
            *held, totals = pipe.execute()
        out = {
            name: (usd(score), usd(int(h or 0)))
            for name, (_, score), h in zip(names, found, held, strict=True)
        }
        charged_all, reserved_all = (int(v or 0) for v in totals)
        out[OTHER] = (
            usd(charged_all - sum(micros(c) for c, _ in out.values())),
            usd(reserved_all - sum(micros(r) for _, r in out.values())),
        )
        return out

    def totals(self) -> tuple[float, float]:
        """(reserved, charged) over every tenant, in US dollars."""
        reserved, charged = self.redis.hmget(self.keys.ledger_totals(), ["reserved", "charged"])
        return usd(int(reserved or 0)), usd(int(charged or 0))

    def money(self, tenants: list[str], since_day: str | None = None) -> list[TenantMoney]:
        """Each tenant's money now (one round trip); with since_day ("2026-12-01", UTC), what
        was charged from that day on instead of ever."""
        today = utcnow_iso()[:10]
        with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.hgetall(self.keys.ledger(tenant))
            found = pipe.execute()
        out = []
        for tenant, raw in zip(tenants, found, strict=True):
            fields = {_text(k): int(v) for k, v in raw.items()}
            by_provider: dict[str, int] = {}
            for name, amount in fields.items():
                if since_day is None and name.startswith("p:"):
                    by_provider[name[2:]] = amount
                elif since_day is not None and name.startswith("pd:") and name[3:13] >= since_day:
                    by_provider[name[14:]] = by_provider.get(name[14:], 0) + amount
            since = (
                fields.get("charged", 0)
                if since_day is None
                else sum(v for k, v in fields.items() if k.startswith("d:") and k[2:] >= since_day)
            )
            out.append(
                TenantMoney(
                    tenant=tenant,
                    reserved_usd=usd(fields.get("reserved", 0)),
                    charged_usd=usd(fields.get("charged", 0)),
                    charged_since_usd=usd(since),
                    spent_day_usd=usd(fields.get(f"d:{today}", 0)),
                    spent_month_usd=usd(fields.get(f"m:{today[:7]}", 0)),
                    providers={k: usd(v) for k, v in sorted(by_provider.items()) if v},
                )
            )
        return out


def refused(
    facts: list[Any], tenant: str, estimate: Estimate, what: str
) -> BudgetExceeded | InvalidRequest:
    """The error for a reservation refused as lua/ledger.lua's ledger_refusal says (facts:
    reason, budget, spent, reserved in micro-dollars, period):

    - BudgetExceeded, naming the budget, what was spent and reserved, and the estimate;
    - InvalidRequest naming `model`, for a tenant with a budget and a job (what: its model, in
      words) some provider of which has no price.
    """
    reason, budget, spent, reserved, period = (_text(f) for f in facts)
    if reason == "unpriced":
        message = (
            f"provider {estimate.unpriced_at} has no price for {what} (its `prices`), and "
            f"tenant {tenant!r} has a budget: only priced jobs may count against it"
        )
        return InvalidRequest(f"invalid request: model: {message}",
                              [{"field": "model", "message": message}])  # fmt: skip
    return BudgetExceeded(
        tenant=tenant,
        budget_usd=usd(int(budget)),
        period=period,
        spent_usd=usd(int(spent)),
        reserved_usd=usd(int(reserved)),
        requested_usd=estimate.usd,
    )


def _text(raw: bytes | str | int) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
