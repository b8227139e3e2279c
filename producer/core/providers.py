"""The providers a deployment sends work to: VIDEOQUEUE_PROVIDERS_FILE, or the single provider
of the VIDEOQUEUE_API_* settings.

A providers file (TOML) lists providers in order of preference; each names its dialect, base
URL, the *name* of the environment variable holding its key (the key itself never appears in
the file, a record or a log line), the models it serves, its own limits and its prices (the
ledger's, producer/core/ledger.py). Limits are kept per account (a fingerprint of the key), so
two entries with one key share them. Without a file, VIDEOQUEUE_PRICES holds the single
provider's prices as JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from producer.core.errors import InvalidConfiguration, InvalidRequest
from producer.core.names import account_of
from producer.core.requests import VideoRequest
from producer.core.settings import ApiFormat, Settings

# The name of the provider the single-provider settings make.
DEFAULT_PROVIDER = "default"
_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# A price's key by resolution: "WxH" as requests give `size`, or "*" for any other size.
_RESOLUTION = re.compile(r"^(\d{2,5}x\d{2,5}|\*)$")
# Any model a provider's prices do not name (as in `models`).
ANY = "*"
MAX_USD = 1_000_000


def _usd(value: Any, where: str = "") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_USD
    ):
        raise ValueError(f"{where}a price in USD is a number from 0 to {MAX_USD}, not {value!r}")
    return float(value)


class ModelPrice(BaseModel):
    """What one generation of a model costs at one provider: per second of video, or per job;
    either one number or a table by resolution ("WxH", and "*" for any other size).

    The seconds are the job's `duration` (its storyboard's total), else default_seconds: what
    a provider bills when a request names none (4 s is OpenAI's default and the sandbox's).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd_per_second: float | dict[str, float] | None = None
    usd_per_job: float | dict[str, float] | None = None
    default_seconds: int = Field(4, ge=1, le=600)

    @field_validator("usd_per_second", "usd_per_job", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            return _usd(value)
        if not value:
            raise ValueError("a table by resolution needs at least one entry")
        for key, amount in value.items():
            if not (isinstance(key, str) and _RESOLUTION.match(key)):
                raise ValueError(f'resolutions are "WxH" (like "1280x720") or "*", not {key!r}')
            _usd(amount, f"{key}: ")
        return {k: float(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _one_basis(self) -> ModelPrice:
        if (self.usd_per_second is None) == (self.usd_per_job is None):
            raise ValueError("give exactly one of usd_per_second and usd_per_job")
        return self


class Provider(BaseModel):
    """One provider (or one account of a provider) work may go to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    dialect: str = Field("router", pattern=_NAME)
    base_url: str = Field(pattern=r"^https?://[^\s/]+")
    # The environment variable holding the key; never the key itself.
    api_key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    api_format: ApiFormat = ApiFormat.OPENAI  # the router's create format
    # The models it serves; "*" serves every model.
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    max_in_flight: int | None = Field(None, ge=1)
    rate_limit_per_s: float | None = Field(None, gt=0)
    rate_burst: int = Field(5, ge=1)
    # Model (or "*": any other) -> its price; the ledger's estimate and charge.
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    def serves(self, model: str) -> bool:
        """Whether this provider takes jobs for model."""
        return "*" in self.models or model in self.models

    def price_of(self, model: str) -> ModelPrice | None:
        """The model's price here, if the provider has one (its own, else its "*" one)."""
        return self.prices.get(model) or self.prices.get(ANY)


class ProvidersFile(BaseModel):
    """A providers file: `[[providers]]` tables, in order of preference."""

    model_config = ConfigDict(extra="forbid")

    providers: list[Provider] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ProvidersFile:
        names = [p.name for p in self.providers]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"provider names must be unique: {', '.join(dupes)} repeated")
        return self


@lru_cache(maxsize=8)
def _read_file(path: Path) -> tuple[Provider, ...]:
    where = f"VIDEOQUEUE_PROVIDERS_FILE {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidConfiguration(f"{where}: cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidConfiguration(f"{where}: not valid TOML ({e})") from None
    try:
        return tuple(ProvidersFile.model_validate(data).providers)
    except ValidationError as e:
        raise InvalidConfiguration(f"{where}: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    """Each problem as "field: message", the field as the file counts it."""
    problems = []
    for err in e.errors():
        # providers.1.base_url -> providers[1].base_url; a union's branch names are left out
        # (usd_per_second.float, usd_per_second.dict[str,...]: one field to the file).
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p[:5] in ("float", "dict["))]
        field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
        problems.append(f"{field.replace('.[', '[')}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(dict.fromkeys(problems))


def _env_prices(settings: Settings) -> dict[str, ModelPrice]:
    """The single provider's prices from VIDEOQUEUE_PRICES (JSON, the file's table).

    Raises:
        InvalidConfiguration: naming VIDEOQUEUE_PRICES and the field.
    """
    raw = settings.prices
    if raw is None or raw == "":
        return {}
    where = "VIDEOQUEUE_PRICES"
    if settings.providers_file is not None:
        raise InvalidConfiguration(
            f"{where}: is for the single provider; with VIDEOQUEUE_PROVIDERS_FILE, give each "
            "[[providers]] entry its own `prices`"
        )
    if isinstance(raw, str):
        return _parsed_prices(raw)
    return _validated_prices(raw)


@lru_cache(maxsize=8)
def _parsed_prices(raw: str) -> dict[str, ModelPrice]:
    """VIDEOQUEUE_PRICES parsed once per value (the single provider is built per enqueue)."""
    try:
        table = json.loads(raw)
    except ValueError as e:
        raise InvalidConfiguration(f"VIDEOQUEUE_PRICES: not valid JSON ({e})") from None
    return _validated_prices(table)


def _validated_prices(table: Any) -> dict[str, ModelPrice]:
    try:
        return _PRICES.validate_python(table)
    except ValidationError as e:
        raise InvalidConfiguration(f"VIDEOQUEUE_PRICES: {_problems(e)}") from None


_PRICES = TypeAdapter(dict[str, ModelPrice])


def providers(settings: Settings) -> tuple[Provider, ...]:
    """The deployment's providers in order of preference.

    Raises:
        InvalidConfiguration: the providers file (or VIDEOQUEUE_PRICES) cannot be read or fails
            validation (the message names the file and the field).
    """
    if settings.providers_file is not None:
        _env_prices(settings)  # refused beside a file
        return _read_file(settings.providers_file)
    return (
        Provider(
            name=DEFAULT_PROVIDER,
            dialect=settings.api_dialect,
            base_url=settings.api_base_url,
            api_key_env="VIDEOQUEUE_API_KEY",
            api_format=settings.api_format,
            max_in_flight=settings.max_in_flight,
            rate_limit_per_s=settings.rate_limit_per_s,
            rate_burst=settings.rate_burst,
            prices=_env_prices(settings),
        ),
    )


def api_key(provider: Provider, settings: Settings) -> SecretStr:
    """The provider's key: the single-provider setting, or the variable the file names."""
    if settings.providers_file is None:
        return settings.api_key
    return SecretStr(os.environ.get(provider.api_key_env, ""))


def account(provider: Provider, settings: Settings) -> str:
    """The name the provider's limits are kept under (a fingerprint of its key)."""
    return account_of(api_key(provider, settings).get_secret_value())


def candidates(request: VideoRequest, settings: Settings) -> list[str]:
    """The providers that may take the request, in order of preference: the one it names, or
    every one serving its model.

    Raises:
        InvalidRequest: naming `provider` (no such provider, or it does not serve the model)
            or `model` (no provider serves it).
    """
    known = providers(settings)
    if request.provider is not None:
        chosen = next((p for p in known if p.name == request.provider), None)
        if chosen is None:
            names = ", ".join(p.name for p in known)
            message = f"no provider named {request.provider!r} (known: {names})"
        elif not chosen.serves(request.model):
            message = f"provider {request.provider!r} does not serve model {request.model!r}"
        else:
            return [chosen.name]
        raise InvalidRequest(f"invalid request: provider: {message}",
                             [{"field": "provider", "message": message}])  # fmt: skip
    serving = [p.name for p in known if p.serves(request.model)]
    if not serving:
        message = f"no provider serves model {request.model!r}"
        raise InvalidRequest(
            f"invalid request: model: {message}", [{"field": "model", "message": message}]
        )
    return serving
