"""Every connection a worker makes, through the outbound URL policy (producer/core/urls.py).

The check sits in the HTTP transport, under httpx's redirect handling, so it applies to each
hop of a redirect chain as well as to the first URL. A name is resolved once, every address it
resolves to is checked, and the connection goes to the checked address (the Host header and
TLS's server name keep the name): a DNS answer that changes between the check and the connect
(DNS rebinding) cannot lead anywhere the check did not see. The API's own origin, which the
operator configured, is not checked.

The same transport puts a request's credentials on each hop (`Credentials`, passed in the
request's extensions): on a hop to the origin they were made for, and on no other. httpx
itself drops only `Authorization` when a redirect leaves an origin; a dialect's key may be
another header (Veo's `x-goog-api-key`) or a query parameter that a redirect's Location
copies along, and it must reach no CDN or other host a provider redirects to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx

from producer.core.deadline import deadline_transport
from producer.core.errors import BlockedUrl
from producer.core.urls import UrlPolicy, literal_address

Resolver = Callable[..., list[tuple[Any, ...]]]
Origin = tuple[str, str, int]


def origin_of(url: httpx.URL) -> Origin:
    default = 443 if url.scheme == "https" else 80
    return url.scheme, url.host.lower(), url.port or default


# The request extension GuardedTransport finds a request's Credentials under.
CREDENTIALS = "videoqueue.credentials"


@dataclass(frozen=True)
class Credentials:
    """What a dialect adds to a request to say who we are, and the one origin it is for.

    Args:
        origin: scheme, host and port they may be sent to (the API's).
        headers: header name -> value (Authorization, x-goog-api-key).
        params: query parameter name -> value (the Gemini API's `key`).
    """

    origin: Origin
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)

    def applies_to(self, url: httpx.URL) -> bool:
        return origin_of(url) == self.origin

    def bind(self, request: httpx.Request) -> None:
        """Put them on a request to their origin; take them off a request to any other (a
        redirect hop httpx built from the hop before, its Location's query included)."""
        mine = self.applies_to(request.url)
        for name, value in self.headers.items():
            if mine:
                request.headers[name] = value
            else:
                request.headers.pop(name, None)
        if not self.params:
            return
        # The query is edited as text: a signed URL's other parameters keep their bytes.
        given = [p for p in request.url.query.decode("ascii").split("&") if p]
        parts = [p for p in given if not self._is_mine(p)]
        if mine:
            parts += [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.params.items()]
        if parts != given:
            request.url = request.url.copy_with(query="&".join(parts).encode("ascii") or None)

    def _is_mine(self, part: str) -> bool:
        pairs = parse_qsl(part, keep_blank_values=True)
        return bool(pairs) and self.params.get(pairs[0][0]) == pairs[0][1]


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that refuses addresses the policy refuses, and sends a request's
    Credentials (its CREDENTIALS extension) to their origin only, on every redirect hop.

    Args:
        policy: the outbound URL policy.
        trusted: origins connected to without a check (the API's own).
        resolve: getaddrinfo-shaped; tests give one that answers as a rebinding DNS would.
        **transport: passed to httpx.HTTPTransport (limits, retries...).
    """

    def __init__(
        self,
        policy: UrlPolicy,
        trusted: Iterable[str] = (),
        resolve: Resolver = socket.getaddrinfo,
        **transport: Any,
    ) -> None:
        self.policy = policy
        self.trusted = {origin_of(httpx.URL(u)) for u in trusted}
        self.resolve = resolve
        # The API's calls are bounded in all by producer/core/deadline.py's within().
        self._inner = deadline_transport(**transport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        credentials = request.extensions.get(CREDENTIALS)
        if isinstance(credentials, Credentials):
            credentials.bind(request)
        url = request.url
        if origin_of(url) not in self.trusted:
            address = self._checked_address(url)
            if address is not None:
                request.url = url.copy_with(host=str(address))
                request.extensions = {**request.extensions, "sni_hostname": url.host}
        return self._inner.handle_request(request)

    def _checked_address(
        self, url: httpx.URL
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address to connect to for url (None: connect by name, it is allowlisted)."""
        where = f"{url.scheme}://{url.host}"
        if reason := self.policy.host_refusal(url.host):
            raise BlockedUrl(f"{where}: {reason}")
        if self.policy.trusts_name(url.host):
            return None
        literal = literal_address(url.host)
        if literal is not None:
            return literal
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = self.resolve(url.host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise httpx.ConnectError(f"{where}: cannot resolve ({e})") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise httpx.ConnectError(f"{where}: resolves to no address")
        for address in addresses:
            if reason := self.policy.address_refusal(address):
                raise BlockedUrl(f"{where} resolves to {reason}")
        return addresses[0]

    def close(self) -> None:
        self._inner.close()


class ConnectionDeadline:
    """Shuts a request's connection down once timeout_s has passed since it began.

    httpx's timeouts bound each read, not the request: a server that drips its answer (its
    head included) a byte at a time stays within every one. The connection is learnt from
    httpcore's trace (the TCP or TLS stream it made for the request, the last one after
    redirects: send `Connection: close` so that no pooled one is used), and a timer shuts its
    socket down, which wakes a read blocked on it. Use as a context around the request and
    pass `extensions={"trace": deadline.trace}`.
    """

    def __init__(self, timeout_s: float) -> None:
        self.fired = False
        self._stream: Any = None
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self._stream = info.get("return_value")

    def _fire(self) -> None:
        self.fired = True
        sock = self._stream.get_extra_info("socket") if self._stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ConnectionDeadline:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()
