"""A webhook receiver for the demo and the tests: records what the backend would receive.

It verifies each delivery's Standard Webhooks signature, records it, and answers with the
status its knobs say, so tests can make the sender retry:

    receiver = WebhookReceiver(secret)
    receiver.fail_first = 2
    with receiver.serve() as hook_url:
        ...  # enqueue a job with webhook_url=hook_url
        receiver.wait_for(lambda d: d.json["type"] == "video.completed", timeout_s=30)

Routes: POST anywhere records a delivery; GET /_receiver/deliveries lists them as JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ops.serve import serve_in_thread

__all__ = ["Delivery", "WebhookReceiver"]

HOOK_PATH = "/hooks"


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got, and how it answered.

    Attributes:
        path: The request path.
        headers: Request headers, names lower-cased.
        body: The raw body bytes (what the signature covers).
        json: The parsed body, or None when it is not JSON.
        verified: Whether the signature verified; None when the receiver has no secret.
        status: The HTTP status the receiver answered.
        received_at: Wall-clock time of arrival (time.time()).
    """

    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    verified: bool | None
    status: int
    received_at: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (body decoded as UTF-8 with replacement)."""
        return {
            "path": self.path,
            "headers": self.headers,
            "body": self.body.decode(errors="replace"),
            "json": self.json,
            "verified": self.verified,
            "status": self.status,
            "received_at": self.received_at,
        }


async def _endless() -> AsyncIterator[bytes]:
    while True:
        yield b"x" * 65536
        await asyncio.sleep(0.01)


class WebhookReceiver:
    """Records webhook deliveries; answers 401 to bad signatures and otherwise per its knobs.

    The knobs may be changed at any time, also while serving:

    Attributes:
        fail_first: Answer 500 to this many of the next (correctly signed) deliveries.
        status_sequence: Answer these codes, in order, before fail_first and then 200.
        delay_s: Wait this long before answering each delivery (to provoke sender timeouts).
        endless_body: Answer with a body that never ends (a sender must not read it whole).
        on_delivery: Called with each delivery as it is recorded (`videoqueue dev` prints
            them); it runs on the server's thread, so it must be quick.
    """

    def __init__(self, secret: str | None = None) -> None:
        """Create a receiver; ``secret`` is the ``whsec_...`` key, None skips verification."""
        self._webhook = Webhook(secret) if secret else None
        self.fail_first = 0
        self.status_sequence: list[int] = []
        self.delay_s = 0.0
        self.endless_body = False
        self.on_delivery: Callable[[Delivery], None] | None = None
        self.url: str | None = None
        self._deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        self.app = Starlette(
            routes=[
                Route("/_receiver/deliveries", self._list, methods=["GET"]),
                Route("/{path:path}", self._receive, methods=["POST"]),
            ]
        )

    # --- serving ---

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve until the block ends.

        Yields:
            The URL to deliver webhooks to (``http://host:port/hooks``).
        """
        with serve_in_thread(self.app, host, port) as base_url:
            self.url = base_url + HOOK_PATH
            try:
                yield self.url
            finally:
                self.url = None

    # --- what was received ---

    @property
    def deliveries(self) -> list[Delivery]:
        """A copy of every delivery so far, oldest first."""
        with self._changed:
            return list(self._deliveries)

    def verified_events(self) -> list[Any]:
        """Parsed bodies of the deliveries a backend would have processed: verified and 2xx."""
        return [d.json for d in self.deliveries if d.verified and 200 <= d.status < 300]

    def wait_for(
        self, predicate: Callable[[Delivery], bool] = lambda d: True, timeout_s: float = 10.0
    ) -> Delivery:
        """Block until a delivery (past or future) satisfies predicate, and return the first.

        Raises:
            TimeoutError: when none did within timeout_s; the message lists what arrived.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for delivery in self._deliveries:
                    if predicate(delivery):
                        return delivery
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    seen = [(d.status, d.verified, d.json) for d in self._deliveries]
                    raise TimeoutError(f"no matching delivery in {timeout_s} s; got {seen}")
                self._changed.wait(remaining_s)

    def clear(self) -> None:
        """Forget the deliveries received so far."""
        with self._changed:
            self._deliveries.clear()

    # --- handlers ---

    def _verify(self, body: bytes, headers: dict[str, str]) -> bool | None:
        if self._webhook is None:
            return None
        try:
            self._webhook.verify(body, headers, json_parse=False)
        # Malformed headers raise ValueError/binascii.Error etc., not only the library's
        # WebhookVerificationError: every failure is a bad signature to the sender.
        except Exception:
            return False
        return True

    def _next_status(self) -> int:
        with self._changed:
            if self.status_sequence:
                return self.status_sequence.pop(0)
            if self.fail_first > 0:
                self.fail_first -= 1
                return 500
            return 200

    async def _receive(self, request: Request) -> Response:
        received_at = time.time()
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = self._verify(body, headers)
        status = 401 if verified is False else self._next_status()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        delivery = Delivery(
            path=request.url.path,
            headers=headers,
            body=body,
            json=parsed,
            verified=verified,
            status=status,
            received_at=received_at,
        )
        with self._changed:
            self._deliveries.append(delivery)
            self._changed.notify_all()
        if self.on_delivery is not None:
            self.on_delivery(delivery)
        # Recorded before the delay, so a test sees the attempt even if the sender gives up.
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.endless_body:
            return StreamingResponse(_endless(), status_code=status)
        return JSONResponse({"received": status < 300}, status_code=status)

    async def _list(self, request: Request) -> Response:
        return JSONResponse([d.to_dict() for d in self.deliveries])
