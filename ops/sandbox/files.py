"""Serving a task's file like a CDN: signed, expiring URLs, ranges, padding, truncation, and a
Content-Length that promises less than what follows it.

File URLs carry their own authority (an HMAC over the task id and expiry) instead of asking for
the API key, as CDN links do; a client that sends its bearer token there anyway is counted,
because that token would leak to a third party on a real CDN.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from starlette.types import Receive, Send

from .errors import DeliberateTruncation
from .gate import RAW_BODY
from .media import free_box_header

CHUNK_BYTES = 1 << 20
_ZEROS = memoryview(bytes(CHUNK_BYTES))
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class UrlSigner:
    """Signs and checks ``exp``/``sig`` query parameters for one sandbox instance."""

    def __init__(self) -> None:
        # A fresh secret per instance: links from an earlier run must not work in this one.
        self._secret = secrets.token_bytes(32)

    def sign(self, task_id: str, expires_at: int) -> str:
        """The signature for task_id's file valid until expires_at (0: never expires)."""
        msg = f"{task_id}:{expires_at}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def query(self, task_id: str, ttl_s: float | None, now: float, *, opaque: bool = False) -> str:
        """The query string of a fresh link: `exp` and `sig`, or (opaque) both in one `token`
        that does not say when it expires."""
        expires_at = 0 if ttl_s is None else int(now + ttl_s)
        sig = self.sign(task_id, expires_at)
        if opaque:
            return "token=" + base64.urlsafe_b64encode(f"{expires_at}.{sig}".encode()).decode()
        return f"exp={expires_at}&sig={sig}"

    def check_query(self, task_id: str, params: Mapping[str, str], now: float) -> str | None:
        """check() of a link's query parameters, in either form query() writes."""
        if (token := params.get("token")) is not None:
            try:
                exp, _, sig = base64.urlsafe_b64decode(token.encode()).decode().partition(".")
            except (ValueError, UnicodeError):
                return "missing or malformed signature"
            return self.check(task_id, exp, sig, now)
        return self.check(task_id, params.get("exp"), params.get("sig"), now)

    def check(self, task_id: str, exp: str | None, sig: str | None, now: float) -> str | None:
        """Why the link is refused ("invalid signature", "expired"), or None when it is good."""
        if exp is None or sig is None or not exp.isdigit():
            return "missing or malformed signature"
        if not hmac.compare_digest(self.sign(task_id, int(exp)), sig):
            return "invalid signature"
        if int(exp) and now >= int(exp):
            return "link expired"
        return None


@dataclass(frozen=True, slots=True)
class Mp4Body:
    """One task's file: the cached clip, then a ``free`` box with the task id and padding."""

    clip: bytes
    task_id: str
    padding: int

    @property
    def _tail(self) -> bytes:
        tag = f"videoqueue-sandbox task={self.task_id}\n".encode()
        return free_box_header(len(tag) + self.padding) + tag

    @property
    def size(self) -> int:
        """Total bytes."""
        return len(self.clip) + len(self._tail) + self.padding

    def iter_range(self, start: int, stop: int) -> Iterator[bytes | memoryview]:
        """Chunks covering bytes [start, stop), padding streamed from one shared zero buffer."""
        pos = 0
        for segment in (self.clip, self._tail):
            end = pos + len(segment)
            if start < end and stop > pos:
                lo, hi = max(start, pos) - pos, min(stop, end) - pos
                for off in range(lo, hi, CHUNK_BYTES):
                    yield memoryview(segment)[off : min(off + CHUNK_BYTES, hi)]
            pos = end
        lo, hi = max(start, pos), min(stop, pos + self.padding)
        while lo < hi:
            n = min(CHUNK_BYTES, hi - lo)
            yield _ZEROS[:n]
            lo += n


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """A single ``Range: bytes=a-b`` as [start, stop); None for a whole-file GET.

    Returns:
        (start, stop), None when there is no (usable) Range header, or "unsatisfiable".
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        return None  # multi-range or garbage: RFC 9110 lets us answer with the whole file
    first, last = match.groups()
    if first == "":
        start, stop = max(0, size - int(last)), size
    else:
        start = int(first)
        stop = size if last == "" else min(size, int(last) + 1)
    if start >= size or start >= stop:
        return "unsatisfiable"
    return start, stop


async def send_file(
    body: Mp4Body,
    start: int,
    stop: int,
    *,
    status: int,
    headers: list[tuple[bytes, bytes]],
    truncate: bool,
    receive: Receive,
    send: Send,
    short_length: bool = False,
    stream_s: float = 0.0,
    chunk_bytes: int = CHUNK_BYTES,
    unsized: bool = False,
) -> None:
    """Stream bytes [start, stop) of body as the response, spread over stream_s seconds.

    With truncate, about half the promised bytes are sent and then the connection is dropped
    (Content-Length still promises all of them), as a flaky CDN does.

    With short_length, Content-Length promises half of the bytes, all of which are sent
    anyway, and the connection is closed after them. The bytes past the promise bypass the
    HTTP layer (gate.RAW_BODY): uvicorn's h11 and httptools both refuse to send them.

    chunk_bytes sets the size of each piece sent (small pieces over a long stream_s: a body
    that drips); unsized leaves Content-Length out (a chunked body).

    Raises:
        DeliberateTruncation: after a truncated body, to make the server close the connection.
    """
    length = stop - start
    limit = stop if not truncate else start + max(0, min(length - 1, length // 2))
    declared = length // 2 if short_length else length
    framing = [] if unsized else [(b"content-length", str(declared).encode())]
    if short_length:
        # Without it the surplus would be read as the start of the next response.
        framing.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers + framing})
    disconnected = asyncio.Event()

    async def watch() -> None:
        # uvicorn silently drops writes after a disconnect; without this a client that gave
        # up would still cost us the rest of a 1 GiB padded file.
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    watcher = asyncio.create_task(watch())
    promised = start + declared
    pos = start
    began = asyncio.get_running_loop().time()
    try:
        for piece in body.iter_range(start, limit):
            for at in range(0, len(piece), chunk_bytes):
                chunk = piece[at : at + chunk_bytes]
                if disconnected.is_set():
                    return
                if stream_s:  # a chunk leaves when its share of stream_s is over
                    due = began + stream_s * (pos + len(chunk) - start) / max(length, 1)
                    await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                split = max(0, min(len(chunk), promised - pos))
                if split:
                    message = {"type": "http.response.body", "body": bytes(chunk[:split])}
                    await send({**message, "more_body": True})
                if split < len(chunk):
                    await send({"type": RAW_BODY, "body": bytes(chunk[split:])})
                pos += len(chunk)
                # A write that fails on a reset socket only schedules connection_lost; yielding
                # lets it run, instead of writing on into a dead transport (asyncio logs each).
                await asyncio.sleep(0)
        if truncate:
            raise DeliberateTruncation(f"cut after {limit - start} of {length} bytes")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()
