"""Characters: reusable people and creatures that video requests reference by id.

Creating one is a single quick call to the provider, made directly rather than queued.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from producer.core.deadline import deadline_transport, within
from producer.core.errors import ProviderError
from producer.core.requests import CharacterRequest, parse_character
from producer.core.settings import Settings, get_settings
from producer.core.store import store
from producer.core.tenants import check_tenant


def create_character(
    request: CharacterRequest | dict[str, Any],
    *,
    tenant: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Create a character at the provider (POST /sora/v1/characters).

    Args:
        tenant: whose character it is ("default" without one): the HTTP API shows a
            character to its tenant's keys only.

    Returns:
        The provider's answer; its "id" goes into a video request's `characters` list.

    Raises:
        InvalidRequest: naming the bad field; nothing was sent.
        ProviderError: the provider refused or could not be reached (no secrets inside).
    """
    s = settings or get_settings()
    owner = check_tenant(tenant)
    body = parse_character(request).model_dump(mode="json")
    answer = _call("POST", "/sora/v1/characters", body, s)
    if isinstance(character_id := answer.get("id"), str) and character_id:
        store(s).set_character_tenant(character_id, owner)
    return answer


def character_tenant(character_id: str, *, settings: Settings | None = None) -> str | None:
    """The tenant a character belongs to; None for one not made by create_character."""
    return store(settings).character_tenant(character_id)


def get_character(character_id: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """A character as the provider shows it (GET /sora/v1/characters/{id}).

    Raises:
        ProviderError: the provider refused (status_code 404: no such character) or could not
            be reached (no secrets inside).
    """
    path = f"/sora/v1/characters/{quote(character_id, safe='')}"
    return _call("GET", path, None, settings or get_settings())


def _call(method: str, path: str, body: dict[str, Any] | None, s: Settings) -> dict[str, Any]:
    what = f"{method} /sora/v1/characters" + ("/{id}" if method == "GET" else "")
    try:
        # The whole exchange within the timeout: a provider dripping its answer (or its head)
        # would otherwise hold the caller as long as it likes.
        with (
            httpx.Client(transport=deadline_transport(), timeout=s.api_timeout_s) as http,
            within(s.api_timeout_s),
        ):
            response = http.request(
                method,
                s.api_base_url.rstrip("/") + path,
                json=body,
                headers={"Authorization": f"Bearer {s.api_key.get_secret_value()}"},
            )
    except httpx.HTTPError as e:
        raise ProviderError(f"{what}: {type(e).__name__}: {e}") from None
    if not response.is_success:
        raise ProviderError(
            f"{what}: HTTP {response.status_code}: {response.text[:300]}",
            status_code=response.status_code,
        )
    try:
        data = response.json()
    except ValueError:
        raise ProviderError(f"{what}: the answer is not JSON", code="bad_response") from None
    if not isinstance(data, dict):
        raise ProviderError(f"{what}: the answer is not a JSON object", code="bad_response")
    return data
