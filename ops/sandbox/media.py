"""Real, playable MP4s, cheap to make: encoded once per shape, off the event loop.

A clip is libx264 at a very low frame rate and crf 51, so a 1080p 20 s clip is ~200 KB and
encodes in a fraction of a second. The bytes are cached per (width, height, duration, fps);
each task's file is that cached clip followed by a top-level MP4 ``free`` box carrying the task
id (and any padding), which players and demuxers skip, so every task's bytes differ while
PyAV/ffprobe still read the requested width, height and duration.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import av
import numpy as np

Shape = tuple[int, int, int, int]  # width, height, duration_s, fps

# Box sizes are 32-bit unless the box says "1" and carries a 64-bit size after its type.
_MAX_SMALL_BOX = 0xFFFFFFFF


def encode_mp4(width: int, height: int, duration_s: int, fps: int = 1) -> bytes:
    """Encode a clip of the given shape.

    Args:
        width: pixels, even.
        height: pixels, even.
        duration_s: whole seconds.
        fps: frames per second (1 keeps it tiny).

    Returns:
        The MP4 bytes (moov at the end: faststart needs a seekable file, and the sandbox serves
        whole files anyway).
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "51", "preset": "ultrafast"}
        # A grey ramp over time on a luma gradient: visibly a video, yet almost free to encode.
        ramp = np.linspace(16, 235, width, dtype=np.uint8)
        for i in range(duration_s * fps):
            plane = np.empty((height * 3 // 2, width), dtype=np.uint8)
            plane[:height] = np.roll(ramp, i * max(1, width // (duration_s * fps)))
            plane[height:] = 128
            frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def free_box_header(payload_len: int) -> bytes:
    """The header of a top-level ``free`` box whose payload is payload_len bytes."""
    if payload_len + 8 <= _MAX_SMALL_BOX:
        return struct.pack(">I4s", payload_len + 8, b"free")
    return struct.pack(">I4sQ", 1, b"free", payload_len + 16)


# broken_moov: a box size below the 8 bytes of its own header is impossible, and it is what
# makes ffmpeg give up: a moov of the right size with garbage inside still opens, with no streams.
_IMPOSSIBLE_BOX_SIZE = 7
_GARBAGE = b"\xde\xad\xbe\xef"


def break_moov(clip: bytes) -> bytes:
    """The clip with its top-level ``moov`` box ruined and every other byte kept.

    The ``ftyp`` box and the ``mdat`` are untouched, so the file still looks like an MP4 to
    anything that checks the first box; moov keeps its type but gets an impossible size and
    garbage in place of its children, so PyAV/ffmpeg refuses to open the file.

    Raises:
        ValueError: when clip has no top-level moov box.
    """
    pos = 0
    while pos + 8 <= len(clip):
        size, kind = struct.unpack_from(">I4s", clip, pos)
        if size == 1:
            size = struct.unpack_from(">Q", clip, pos + 8)[0]
        elif size == 0:
            size = len(clip) - pos
        if kind == b"moov":
            out = bytearray(clip)
            end = min(pos + size, len(clip))  # a moov that claims more than is there
            garbage = _GARBAGE * ((end - pos) // len(_GARBAGE) + 1)
            out[pos + 8 : end] = garbage[: max(0, end - pos - 8)]
            struct.pack_into(">I", out, pos, _IMPOSSIBLE_BOX_SIZE)
            return bytes(out)
        if size < 8:
            break
        pos += size
    raise ValueError("no top-level moov box")


class MediaCache:
    """Encoded clips by shape, least recently used first out.

    Encoding runs in a small thread pool; concurrent asks for one shape share one encode.
    Futures (not asyncio tasks) hold the work so the cache outlives any one event loop.
    """

    def __init__(self, max_shapes: int = 64, workers: int = 2) -> None:
        self._max_shapes = max_shapes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-encode")
        self._clips: OrderedDict[Shape, Future[bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def prefetch(self, shape: Shape) -> Future[bytes]:
        """Start encoding shape unless it is cached or under way."""
        with self._lock:
            future = self._clips.get(shape)
            if future is None or (future.done() and future.exception() is not None):
                future = self._pool.submit(encode_mp4, *shape)
                self._clips[shape] = future
            self._clips.move_to_end(shape)
            while len(self._clips) > self._max_shapes:
                self._clips.popitem(last=False)
            return future

    async def get(self, shape: Shape) -> bytes:
        """The clip for shape, encoding it first if needed (without blocking the loop)."""
        return await asyncio.wrap_future(self.prefetch(shape))

    def close(self) -> None:
        """Stop the encoder threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
