"""Real, playable MP4s, cheap to make: encoded once per shape, off the event loop.

A clip is libx264 at a very low frame rate and crf 51, so a 1080p 20 s clip is ~40 KB and
encodes in a fraction of a second. It shows a wash of colour sliding sideways, after a first
frame of black (as many generated clips open), so that a poster frame shows something and
proves it was not taken from the first frame.

The bytes are cached per (width, height, duration, fps); each task's file is that cached clip
followed by a top-level MP4 ``free`` box carrying the task id (and any padding), which players
and demuxers skip, so every task's bytes differ while PyAV/ffprobe still read the requested
width, height and duration.
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
    frames = duration_s * fps
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "51", "preset": "ultrafast"}
        # A wash of colour (blue to yellow down, red to green across, dark to light) sliding
        # sideways over time: visibly a video, yet almost free to encode (one motion vector).
        y = np.tile(np.linspace(16, 235, width, dtype=np.uint8), (height, 1))
        u = np.tile(np.linspace(200, 56, height // 2, dtype=np.uint8)[:, None], (1, width // 2))
        v = np.tile(np.linspace(56, 200, width // 2, dtype=np.uint8), (height // 2, 1))
        step = 2 * max(1, width // (2 * frames))  # even: chroma moves by whole samples
        for i in range(frames):
            plane = np.empty((height * 3 // 2, width), dtype=np.uint8)
            plane[:height] = np.roll(y, i * step, axis=1)
            # yuv420p as one array: U then V, each (height/2 x width/2) packed two rows a line.
            plane[height : height * 5 // 4] = np.roll(u, i * step // 2, axis=1).reshape(-1, width)
            plane[height * 5 // 4 :] = np.roll(v, i * step // 2, axis=1).reshape(-1, width)
            if i == 0 and frames > 1:
                # It opens on black, as many generated clips do: a poster must not be frame 0.
                plane[:height], plane[height:] = 16, 128
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
    pos, _, end = _box(clip, b"moov")
    out = _garbled(clip, pos + 8, end)
    struct.pack_into(">I", out, pos, _IMPOSSIBLE_BOX_SIZE)
    return bytes(out)


def garble_frames(clip: bytes) -> bytes:
    """The clip with the payload of its ``mdat`` box (every frame) replaced by garbage.

    ``ftyp`` and ``moov`` are untouched, so the file opens and reports its width, height and
    duration, but no frame decodes: a video whose shape is known and whose picture is not.

    Raises:
        ValueError: when clip has no top-level mdat box.
    """
    pos, header_size, end = _box(clip, b"mdat")
    return bytes(_garbled(clip, pos + header_size, end))


def _box(clip: bytes, wanted: bytes) -> tuple[int, int, int]:
    """Where the first top-level box of type wanted is: (start, header size, end), its end
    cut at the end of clip (a box that claims more than is there)."""
    pos = 0
    while pos + 8 <= len(clip):
        size, kind = struct.unpack_from(">I4s", clip, pos)
        header_size = 8
        if size == 1:
            size, header_size = struct.unpack_from(">Q", clip, pos + 8)[0], 16
        elif size == 0:
            size = len(clip) - pos
        if kind == wanted:
            return pos, header_size, min(pos + size, len(clip))
        if size < 8:
            break
        pos += size
    raise ValueError(f"no top-level {wanted.decode()} box")


def _garbled(clip: bytes, start: int, end: int) -> bytearray:
    out = bytearray(clip)
    garbage = _GARBAGE * (max(0, end - start) // len(_GARBAGE) + 1)
    out[start:end] = garbage[: max(0, end - start)]
    return out


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
