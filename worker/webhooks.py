"""Signing and sending webhooks, per Standard Webhooks (the scheme OpenAI and Svix use)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from producer.core.errors import BlockedUrl
from producer.core.records import WebhookDelivery, WebhookState, utcnow_iso
from producer.core.settings import Settings
from producer.core.store import JobStore
from worker import metrics
from worker.answers import retry_after_s
from worker.egress import ConnectionDeadline
from worker.redaction import redact


def message_id(owner_id: str, event_type: str, rerun: int = 0) -> str:
    """The webhook-id of one event: the same on every retry and replay, so receivers can
    dedupe. A job run again (`videoqueue retry`) ends in a new event: rerun (the record's
    `reruns`) makes its id new; the first run's id is the one it always had."""
    event = f"{owner_id}:{event_type}" + (f":{rerun}" if rerun else "")
    return "msg_" + hashlib.sha256(event.encode()).hexdigest()[:32]


def signed_headers(secret: str | None, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    """The webhook-id, webhook-timestamp and (with a secret) webhook-signature headers."""
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "user-agent": "videoqueue-webhooks",
    }
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(msg_id, now, body)
    return headers


@dataclass
class DeliveryResult:
    ok: bool
    status_code: int | None
    error: str | None = None
    retry_after_s: float | None = None
    # The receiver's address is refused by the outbound URL policy: retrying cannot help.
    blocked: bool = False

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver asks us to stop sending."""
        return self.status_code == 410


def deliver(
    http: httpx.Client, url: str, body: str, msg_id: str, secret: str | None, timeout_s: float
) -> DeliveryResult:
    """POST one signed delivery. 2xx is success; redirects are not followed (a failure).

    Only the status line and headers are read: the receiver's body says nothing we use, and
    one that never ends or drips a byte at a time must not hold the worker. The whole attempt
    takes at most timeout_s: past it the connection is shut down, whatever phase it is in
    (a head dripped a byte at a time stays within every per-read timeout).
    """
    headers = signed_headers(secret, msg_id, body, datetime.now(UTC))
    # Its own connection, so that the deadline can shut it down (and no pooled one is reused).
    headers["connection"] = "close"
    deadline = ConnectionDeadline(timeout_s)
    try:
        with deadline, http.stream(
            "POST", url, content=body.encode(), headers=headers, timeout=timeout_s,
            extensions={"trace": deadline.trace},
        ) as response:  # fmt: skip
            pass  # closing an unread answer drops its connection instead of draining it
    except BlockedUrl as e:
        return DeliveryResult(False, None, f"blocked_url: {e}", blocked=True)
    except httpx.HTTPError as e:
        if deadline.fired:
            return DeliveryResult(False, None, f"timed out: over {timeout_s:g} s in all")
        return DeliveryResult(False, None, f"{type(e).__name__}: {e}")
    if response.is_success:
        return DeliveryResult(True, response.status_code)
    return DeliveryResult(
        False,
        response.status_code,
        f"HTTP {response.status_code}",
        retry_after_s(response.headers),
    )


def record_attempt(hook: WebhookDelivery, result: DeliveryResult, attempts_allowed: int) -> None:
    """Count one delivery attempt and move the delivery to its next state."""
    hook.attempts += 1
    hook.last_status_code = result.status_code
    # A transport error may quote the URL, whose query may be the receiver's token.
    hook.last_error = redact(result.error) if result.error else None
    hook.last_attempt_at = utcnow_iso()
    if result.ok:
        hook.state = WebhookState.DELIVERED
    elif result.gone:
        hook.state = WebhookState.GONE
    elif result.blocked or hook.attempts >= attempts_allowed:
        hook.state = WebhookState.DEAD


def send_event(
    store: JobStore,
    http: httpx.Client,
    settings: Settings,
    owner_id: str,
    body_key: str,
    hook: WebhookDelivery,
    data: dict[str, Any],
    rerun: int = 0,
) -> tuple[str, DeliveryResult]:
    """Deliver one event once; returns its webhook-id and how it went. The body is pinned at
    the first attempt under body_key (the job's run's or the batch's: their ids may be
    equal), so every retry carries the same bytes under the same webhook-id; only the
    signature's time is new."""
    data.pop("webhook", None)  # delivery bookkeeping changes per attempt; the event does not
    body = store.pin_event_body(
        body_key,
        json.dumps({"type": hook.event_type, "timestamp": utcnow_iso(), "data": data}),
        store.expire_at_ms(data.get("finished_at")),
    )
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    msg_id = message_id(owner_id, hook.event_type, rerun)
    result = deliver(http, hook.url, body, msg_id, secret, settings.webhook_timeout_s)
    metrics.webhook_delivery(result.ok, result.status_code, result.blocked)
    return msg_id, result


def record_dead_letter(
    store: JobStore, owner_id: str, hook: WebhookDelivery, rerun: int = 0
) -> str:
    """Keep a delivery given up on in the dead letters, under its webhook-id and with the run
    its body belongs to (`webhooks replay` sends that body); returns the webhook-id."""
    msg_id = message_id(owner_id, hook.event_type, rerun)
    store.record_dead_letter(msg_id, {**hook.model_dump(mode="json"), "rerun": rerun}, owner_id)
    return msg_id
