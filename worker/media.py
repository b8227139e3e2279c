"""MP4 checks: is it an MP4 at all, and what are its width, height and duration."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import av

from producer.errors import PermanentError


def check_ftyp(head: bytes) -> None:
    """Refuse bytes that do not start with an MP4 `ftyp` box (an HTML error page, say).

    Raises:
        PermanentError: code "not_mp4".
    """
    if len(head) < 8 or head[4:8] != b"ftyp":
        raise PermanentError(
            f"the provider's file is not an MP4 (starts with {head[:16]!r})", code="not_mp4"
        )


@dataclass
class VideoInfo:
    width: int | None
    height: int | None
    duration_s: float | None


def probe(fileobj: Any) -> VideoInfo:
    """Width, height and duration of the MP4 in a seekable file-like object.

    PyAV reads only the boxes it needs (ftyp, moov), seeking past the media data.
    """
    with av.open(fileobj, mode="r", format="mp4") as container:
        stream = container.streams.video[0] if container.streams.video else None
        duration_s = None
        if container.duration is not None:
            duration_s = round(container.duration / av.time_base, 3)
        elif stream is not None and stream.duration is not None and stream.time_base:
            duration_s = round(float(stream.duration * stream.time_base), 3)
        return VideoInfo(
            width=stream.codec_context.width if stream else None,
            height=stream.codec_context.height if stream else None,
            duration_s=duration_s,
        )


class S3RangeReader(io.RawIOBase):
    """A read-only, seekable view of an S3 object through ranged GETs, for probe().

    Reads come in blocks of block_size_bytes so that walking the MP4's boxes costs a few
    requests, not one per box.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        size_bytes: int,
        block_size_bytes: int = 256 * 1024,
    ) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.size = size_bytes
        self.block = block_size_bytes
        self.pos = 0
        self._cache_start = -1
        self._cache = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        n = min(len(buffer), self.size - self.pos)
        start = self.pos
        if not (self._cache_start <= start and start + n <= self._cache_start + len(self._cache)):
            end = min(self.size, start + max(n, self.block)) - 1
            obj = self.client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end}"
            )
            with obj["Body"] as body:
                self._cache = body.read()
            self._cache_start = start
        offset = start - self._cache_start
        chunk = self._cache[offset : offset + n]
        buffer[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)
