"""Verifying videoqueue's webhooks on the receiving side (Standard Webhooks)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibError

from producer.core.errors import WebhookVerificationError


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """Check a delivery's signature and timestamp, and return its parsed payload.

    Args:
        body: the raw request body, exactly as received.
        headers: the request headers (webhook-id, webhook-timestamp, webhook-signature).
        secret: the shared secret, "whsec_" + base64.

    Raises:
        WebhookVerificationError: when the signature or timestamp does not verify.
    """
    raw = body.decode() if isinstance(body, bytes) else body
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        Webhook(secret).verify(raw, lowered)
    except _LibError as e:
        raise WebhookVerificationError(f"webhook did not verify: {e}") from None
    payload: dict[str, Any] = json.loads(raw)
    return payload
