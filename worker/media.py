"""MP4 checks: is it an MP4 at all, and what are its width, height and duration."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import av

from producer.core.errors import InvalidVideo, PermanentError


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

    Raises:
        InvalidVideo: the bytes are not a readable MP4 with a video track; the message says
            what is wrong. Whatever PyAV raises becomes this.
        Exception: what fileobj itself raises (an S3 read failing, say), unchanged: an
            outage is not a broken video.
    """
    watched = Watched(fileobj)
    try:
        with av.open(watched, mode="r", format="mp4") as container:
            return _info(container)
    except Exception as e:
        if watched.error is not None:
            raise watched.error from None
        if isinstance(e, _Unusable):
            symptom = str(e)
        elif isinstance(e, av.FFmpegError):
            symptom = f"FFmpeg: {e.strerror or type(e).__name__}"  # not str(e): names the file
        else:
            symptom = f"PyAV: {type(e).__name__}"
        problem = _box_problem(fileobj)
        reason = f"{problem}; {symptom}" if problem else f"its moov box is unreadable: {symptom}"
        raise InvalidVideo(f"the file is not a readable MP4: {reason}") from None


class _Unusable(Exception):
    """Raised inside probe() when PyAV opens the file but finds no usable video track."""


def _info(container: Any) -> VideoInfo:
    # A damaged moov often opens without error and simply lists no streams.
    if not container.streams.video:
        raise _Unusable("no video track")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec is None or not codec.width or not codec.height:
        raise _Unusable("the video track has no frame size")
    duration_s = None
    if container.duration is not None:
        duration_s = round(container.duration / av.time_base, 3)
    elif stream.duration is not None and stream.time_base:
        duration_s = round(float(stream.duration * stream.time_base), 3)
    return VideoInfo(width=codec.width, height=codec.height, duration_s=duration_s)


class Watched:
    """fileobj as PyAV sees it, remembering the last exception fileobj itself raised.

    So probe() (and worker/poster.py) tell an S3 outage from a broken video whatever PyAV and
    FFmpeg make of the failed read.
    """

    def __init__(self, fileobj: Any) -> None:
        self.fileobj = fileobj
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self.fileobj.read(n))
        except Exception as e:
            self.error = e
            raise

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return int(self.fileobj.seek(offset, whence))
        except Exception as e:
            self.error = e
            raise

    def tell(self) -> int:
        return int(self.fileobj.tell())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


_MAX_BOXES = 1000


def _box_problem(fileobj: Any) -> str | None:
    """What is wrong with the file's top-level boxes, in words; None if they look whole."""
    size = fileobj.seek(0, io.SEEK_END)
    if size < 8:
        return f"it is {size} bytes long, too short for an MP4"
    pos, kinds = 0, set()
    for _ in range(_MAX_BOXES):
        if pos >= size:
            break
        fileobj.seek(pos)
        header = _read_exactly(fileobj, 16)
        if len(header) < 8:
            return f"the file ends inside a box header at byte {pos} (truncated)"
        box_size, kind = struct.unpack(">I4s", header[:8])
        if pos == 0 and kind != b"ftyp":
            return "it does not start with an MP4 ftyp box"
        if not all(0x20 <= c < 0x7F for c in kind):
            return f"the bytes at offset {pos} are not an MP4 box (damaged or cut)"
        name, header_size = kind.decode("ascii"), 8
        if box_size == 1:  # a 64-bit size follows the type
            if len(header) < 16:
                return f"the file ends inside the {name} box header (truncated)"
            box_size, header_size = struct.unpack(">Q", header[8:16])[0], 16
        elif box_size == 0:  # the box runs to the end of the file
            box_size = size - pos
        if box_size < header_size:
            return f"the {name} box at offset {pos} has an impossible size ({box_size})"
        if pos + box_size > size:
            return (
                f"the file ends {size - pos} bytes into the {box_size}-byte {name} box (truncated)"
            )
        kinds.add(kind)
        pos += box_size
    if b"moov" not in kinds:
        return "it has no moov box (the index of its frames)"
    return None


def _read_exactly(fileobj: Any, n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := fileobj.read(n - len(data))):
        data += chunk
    return data


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
