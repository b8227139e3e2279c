"""The one place every request passes: counting, bearer auth, the per-minute and per-second
limits, and the transport faults (5xx, plain or dripped, before the request takes effect; slow
answers and hangs after), plus the two things only the outermost layer can do: overriding
Retry-After on whatever answer it goes out with (retry_after), and writing bytes past the
HTTP layer (RAW_BODY).

Written as plain ASGI middleware rather than per-route code, so that route handlers read as
the happy path and a fault knob applies the same way to every route it names.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ops.serve import reset_on_close

from .errors import ApiError, DeliberateTruncation
from .oddities import drip_bytes
from .speech import SPEECHES, Speech, kling_key, route_class
from .state import RPM_WINDOW_S, RPS_WINDOW_S

if TYPE_CHECKING:
    from .service import Sandbox

# Where handlers find the caller's API key.
KEY_SCOPE = "sandbox.api_key"
# A send() message whose body goes to the socket as is, after whatever the server has written;
# the scope key is set when the server lets the gate do that (uvicorn does).
RAW_BODY = "sandbox.raw_body"
RAW_SCOPE = "sandbox.raw_writes"
# Raw writes bypass uvicorn's flow control, so they wait for the socket buffer to drain here.
_RAW_HIGH_WATER = 1 << 20
_RAW_DRAIN_POLL_S = 0.002

_CLASSES: list[tuple[str | None, re.Pattern[str], str]] = [
    (None, re.compile(r"^/_sandbox(/.*)?$"), "admin"),
    (None, re.compile(r"^/(files|cdn)/[^/]+$"), "file"),
    ("POST", re.compile(r"^/v1/videos/?$"), "create"),
    ("POST", re.compile(r"^/v1/video/create/?$"), "create"),
    (None, re.compile(r"^/v1/videos/characters(/[^/]+)?/?$"), "characters"),
    (None, re.compile(r"^/sora/v1/characters(/[^/]+)?/?$"), "characters"),
    (None, re.compile(r"^/v1/videos/[^/]+/content/?$"), "content"),
    (None, re.compile(r"^/v1/videos/[^/]+/?$"), "status"),
    (None, re.compile(r"^/v1/video/query/?$"), "status"),
]
_NEEDS_KEY = frozenset({"create", "status", "content", "characters"})
# The routes a file host serves: what file_outage_s refuses.
_DOWNLOADS = frozenset({"file", "content"})
_POLL_S = 0.05


def classify(method: str, path: str) -> str | None:
    """The fault/route class of a request: create, status, content, file, characters, admin."""
    for want, pattern, name in _CLASSES:
        if (want is None or want == method) and pattern.match(path):
            return name
    return None


class Gate:
    """ASGI middleware in front of the sandbox's routes."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._classify(scope["method"], scope["path"])
        if route == "admin":
            await self.app(scope, receive, send)
            return

        sb, state = self.sandbox, self.sandbox.state
        transport = _transport(send)
        if transport is not None:
            scope[RAW_SCOPE] = True
        status_query = route == "status" and scope["method"] in ("GET", "HEAD")

        async def counting_send(message: Message) -> None:
            if message["type"] == RAW_BODY:
                if transport is not None:
                    await _write_raw(transport, message["body"])
                return
            if message["type"] == "http.response.start":
                state.count_in("responses_by_code", str(message["status"]))
                message = _retry_after(message, sb.config.retry_after, status_query)
            await send(message)

        try:
            try:
                key = self._authorize(scope, route)
            finally:
                state.note_request(scope.get(KEY_SCOPE))
            if key is not None:
                self._check_rate(key)
            fault = self._next_in_sequence(route)
            if route is not None:
                self._maybe_inject_error(route)
        except ApiError as err:
            await err.response()(scope, receive, counting_send)
            return

        cfg = sb.config
        if route in _DOWNLOADS and sb.clock() < sb.file_outage_until:
            await self._file_outage(scope, receive, counting_send, transport)
            return
        if route in cfg.drip_routes and state.roll("drip_error", cfg.drip_error_rate):
            state.count_in("faults", "drip_error")
            await self._drip_error(scope, receive, counting_send, transport)
            return
        if fault == "lost":
            # The request takes effect (a create makes its task); only its answer is lost.
            async def drop(_message: Message) -> None:
                pass

            await self.app(scope, receive, drop)
            lost = ApiError(502, "bad gateway", code="bad_gateway", type_="server_error")
            await lost.response()(scope, receive, counting_send)
            return
        # Slow answers and hangs come after the request took effect (a create has made its
        # task): the nasty case, where a client that gives up does not know what happened.
        slow = route in cfg.slow_routes and state.roll("slow", cfg.slow_rate)
        rolled_hang = route is not None and state.roll("hang", cfg.hang_rate)
        hang = rolled_hang or fault == "hang"
        if not (slow or hang):
            await self.app(scope, receive, counting_send)
            return
        swallow = False

        async def delaying_send(message: Message) -> None:
            nonlocal swallow
            if swallow:
                return
            if message["type"] == "http.response.start":
                if hang:
                    if rolled_hang:
                        state.count_in("faults", "hang")
                    swallow = True
                    if not await self._hold(cfg.hang_s, receive):
                        err = ApiError(
                            504, "upstream timed out", code="gateway_timeout", type_="server_error"
                        )
                        await err.response()(scope, receive, counting_send)
                    return
                state.count_in("faults", "slow")
                await self._hold(cfg.slow_s, None)
            await counting_send(message)

        await self.app(scope, receive, delaying_send)

    def _classify(self, method: str, path: str) -> str | None:
        speech = SPEECHES.get(self.sandbox.config.dialect)
        if speech is not None and (route := route_class(speech, method, path)) is not None:
            return route
        return classify(method, path)

    def _check_rate(self, key: str) -> None:
        sb = self.sandbox
        for limit, window_s, per, name in (
            (sb.config.rpm_limit, RPM_WINDOW_S, "minute", "rpm"),
            (sb.config.rps_limit, RPS_WINDOW_S, "second", "rps"),
        ):
            wait_s = sb.state.take_rate_slot(key, limit, window_s, sb.clock())
            if wait_s is not None:
                sb.state.count_in("rate_limited", name)
                retry = max(1, math.ceil(wait_s))
                raise ApiError(
                    429,
                    f"rate limit of {limit} requests per {per} reached; retry after {retry} s",
                    code="rate_limit_exceeded",
                    type_="rate_limit_error",
                    headers={"Retry-After": str(retry)},
                )

    def _next_in_sequence(self, route: str | None) -> str:
        """The request's fate from its route class's fault_sequence; raised here when it is
        refused before taking effect (429, 503, 404)."""
        state, cfg = self.sandbox.state, self.sandbox.config
        sequence = next((seq for name, seq in cfg.fault_sequence.items() if name == route), [])
        if route is None or not sequence:
            return "pass"
        fault = state.next_fault(route, sequence)
        if fault != "pass":
            state.count_in("faults", f"sequence_{fault}")
        if fault == "429":
            raise ApiError(429, "rate limit reached (fault_sequence); retry after 1 s",
                           code="rate_limit_exceeded", type_="rate_limit_error",
                           headers={"Retry-After": "1"})  # fmt: skip
        if fault == "404":
            raise ApiError(404, "no such task (fault_sequence)", code="task_not_exist")
        if fault == "503":
            raise ApiError(503, "the sandbox injected a 503 (fault_sequence)",
                           code="injected_error", type_="server_error")  # fmt: skip
        return fault

    def _maybe_inject_error(self, route: str) -> None:
        """Refuse the request with a 5xx before it does anything (error_rate)."""
        state, cfg = self.sandbox.state, self.sandbox.config
        if route in cfg.error_routes and state.roll("error", cfg.error_rate):
            state.count_in("faults", "error")
            status = state.choice("error_code", cfg.error_codes)
            raise ApiError(
                status,
                f"the sandbox injected a {status} (error_rate={cfg.error_rate})",
                code="injected_error",
                type_="server_error",
                headers={"Retry-After": "1"} if status == 503 else None,
            )

    async def _file_outage(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        transport: asyncio.WriteTransport | None,
    ) -> None:
        """A download while the file host is down (file_outage_s), refused as file_outage
        says: a 503; the connection reset before any answer; or no answer until the client
        gives up (a 504 if the outage ends first). Counted in faults as file_outage_<how>."""
        sb = self.sandbox
        how = sb.config.file_outage
        sb.state.count_in("faults", f"file_outage_{how}")
        if how == "reset" and transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                reset_on_close(sock)
            transport.abort()
            # The only way out of an ASGI app that has sent nothing, which uvicorn logs
            # quietly (quiet_deliberate_truncations).
            raise DeliberateTruncation("connection reset (file_outage)")
        if how == "timeout":
            if await self._hold(sb.file_outage_until - sb.clock(), receive):
                return  # the client gave up
            err = ApiError(504, "the file host timed out (file_outage)", code="gateway_timeout",
                           type_="server_error")  # fmt: skip
        else:
            err = ApiError(503, "the file host is down (file_outage)", code="file_host_down",
                           type_="server_error", headers={"Retry-After": "1"})  # fmt: skip
        await err.response()(scope, receive, send)

    async def _drip_error(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        transport: asyncio.WriteTransport | None,
    ) -> None:
        """A 503 that drips (drip_error_rate): its body, or (drip_head) its head as well,
        written past the HTTP layer, which sends a head whole."""
        err = ApiError(
            503, "the sandbox drips this answer (drip_error_rate)", code="injected_drip",
            type_="server_error",
        )  # fmt: skip
        body = bytes(err.response().body)
        if not self.sandbox.config.drip_head or transport is None:
            await StreamingResponse(
                drip_bytes(body), status_code=503, media_type="application/json"
            )(scope, receive, send)
            return
        head = (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        async for byte in drip_bytes(head + body):
            if transport.is_closing() or self.sandbox.closing.is_set():
                return  # the client gave up
            await _write_raw(transport, byte)
        transport.close()

    def _authorize(self, scope: Scope, route: str | None) -> str | None:
        if route not in _NEEDS_KEY:
            return None
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        speech = SPEECHES.get(self.sandbox.config.dialect)
        if speech is not None:
            return self._authorize_speech(scope, speech, headers)
        header = headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key: send Authorization: Bearer YOUR_KEY.",
                code="missing_api_key",
            )
        if token.strip() not in self.sandbox.config.api_keys:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        key = token.strip()
        scope[KEY_SCOPE] = key
        return key

    def _authorize_speech(self, scope: Scope, speech: Speech, headers: dict[str, str]) -> str:
        """The key of a request in one of speech.py's dialects, by its own auth scheme."""
        for name, value in speech.headers.items():
            if headers.get(name) != value:
                raise ApiError(400, f"the {name} header must be {value!r}", code="missing_header")
        keys = self.sandbox.config.api_keys
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key: str | None
        if speech.auth == "x-goog-api-key":
            # The Gemini API takes its key as a header or as the `key` query parameter.
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            key = headers.get("x-goog-api-key", "").strip() or (query.get("key") or [None])[0]
        elif speech.auth == "kling-jwt":
            ok = scheme.lower() == "bearer"
            key = kling_key(token.strip(), keys, self.sandbox.clock()) if ok else None
        else:
            want = "key" if speech.auth == "key" else "bearer"
            key = token.strip() if scheme.lower() == want else None
        if key is None or key not in keys:
            raise ApiError(401, f"missing or wrong {speech.auth} credentials", code="unauthorized")
        scope[KEY_SCOPE] = key
        return key

    async def _hold(self, seconds: float, receive: Receive | None) -> bool:
        """Wait before answering; True when the client disconnected meanwhile.

        Args:
            seconds: how long.
            receive: watch it for the client's disconnect (None: don't).
        """
        sb = self.sandbox
        disconnected = asyncio.Event()

        async def watch() -> None:
            assert receive is not None
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch()) if receive is not None else None
        deadline = sb.clock() + seconds
        try:
            # Poll so that shutting the sandbox down is not held up by a long hang.
            while not disconnected.is_set() and not sb.closing.is_set():
                left = deadline - sb.clock()
                if left <= 0:
                    break
                await asyncio.sleep(min(_POLL_S, left))
        finally:
            if watcher is not None:
                watcher.cancel()
        return disconnected.is_set()


def _retry_after(message: Message, value: str | None, status_query: bool) -> Message:
    """The response start with Retry-After replaced by value, where retry_after says so."""
    status = message["status"]
    if value is None or not (status == 429 or status >= 500 or (status_query and status < 300)):
        return message
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
    return {**message, "headers": [*headers, (b"retry-after", value.encode("ascii"))]}


def _transport(send: Send) -> asyncio.WriteTransport | None:
    """The connection's transport, when the server exposes it.

    ASGI has no way to write bytes the HTTP layer refuses; uvicorn's send is a bound method of
    its per-request cycle object, which holds the transport (h11 and httptools alike).
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if isinstance(transport, asyncio.WriteTransport) else None


async def _write_raw(transport: asyncio.WriteTransport, data: bytes) -> None:
    if transport.is_closing():
        return
    transport.write(data)
    while transport.get_write_buffer_size() > _RAW_HIGH_WATER and not transport.is_closing():
        await asyncio.sleep(_RAW_DRAIN_POLL_S)
