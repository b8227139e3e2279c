"""The providers a deployment sends work to: VIDEOQUEUE_PROVIDERS_FILE, or the single provider
of the VIDEOQUEUE_API_* settings.

A providers file (TOML) lists providers in order of preference; each names its dialect, base
URL, the *name* of the environment variable holding its key (the key itself never appears in
the file, a record or a log line), the models it serves and its own limits. Limits are kept
per account (a fingerprint of the key), so two entries with one key share them.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from producer.core.errors import InvalidConfiguration, InvalidRequest
from producer.core.names import account_of
from producer.core.requests import VideoRequest
from producer.core.settings import ApiFormat, Settings

# The name of the provider the single-provider settings make.
DEFAULT_PROVIDER = "default"
_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


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

    def serves(self, model: str) -> bool:
        """Whether this provider takes jobs for model."""
        return "*" in self.models or model in self.models


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
        problems = []
        for err in e.errors():
            loc = err["loc"]
            # providers.1.base_url -> providers[1].base_url: the table as the file counts it.
            field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
            problems.append(f"{field.replace('.[', '[')}: {err['msg']}")
        raise InvalidConfiguration(f"{where}: {'; '.join(problems)}") from None


def providers(settings: Settings) -> tuple[Provider, ...]:
    """The deployment's providers in order of preference.

    Raises:
        InvalidConfiguration: the providers file cannot be read or fails validation (the
            message names the file and the field).
    """
    if settings.providers_file is not None:
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
