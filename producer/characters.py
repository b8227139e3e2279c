"""Characters: reusable people and creatures that video requests reference by id.

Creating one is a single quick call to the provider, made directly rather than queued.
"""

from __future__ import annotations

from typing import Any

import httpx

from producer.core.deadline import deadline_transport, within
from producer.core.errors import ProviderError
from producer.core.requests import CharacterRequest, parse_character
from producer.core.settings import Settings, get_settings


def create_character(
    request: CharacterRequest | dict[str, Any], *, settings: Settings | None = None
) -> dict[str, Any]:
    """Create a character at the provider (POST /sora/v1/characters).

    Returns:
        The provider's answer; its "id" goes into a video request's `characters` list.

    Raises:
        InvalidRequest: naming the bad field; nothing was sent.
        ProviderError: the provider refused or could not be reached (no secrets inside).
    """
    s = settings or get_settings()
    body = parse_character(request).model_dump(mode="json")
    url = s.api_base_url.rstrip("/") + "/sora/v1/characters"
    try:
        # The whole exchange within the timeout: a provider dripping its answer (or its head)
        # would otherwise hold the caller as long as it likes.
        with (
            httpx.Client(transport=deadline_transport(), timeout=s.api_timeout_s) as http,
            within(s.api_timeout_s),
        ):
            response = http.post(
                url, json=body, headers={"Authorization": f"Bearer {s.api_key.get_secret_value()}"}
            )
    except httpx.HTTPError as e:
        raise ProviderError(f"POST /sora/v1/characters: {type(e).__name__}: {e}") from None
    if not response.is_success:
        raise ProviderError(
            f"POST /sora/v1/characters: HTTP {response.status_code}: {response.text[:300]}",
            status_code=response.status_code,
        )
    data: dict[str, Any] = response.json()
    return data
