"""Poster frames: one representative frame of a stored MP4, as a small JPEG beside it.

Which frame: the one with the most luma spread (the standard deviation of its brightness)
among the frames at 10 %, 30 % and 50 % of the video. Generated clips often open on black, a
fade or a flat title card, so the first frame makes a poor poster; 10 % skips an opening fade,
and a choice among three guards against a cut to black or a flash at any one of them. Three
bounds the work: each costs one seek and the decoding from the keyframe before it (at most
MAX_FRAMES_PER_SEEK frames).

How: PyAV reads the MP4 back from the bucket through ranged GETs (worker/media.py's
S3RangeReader), so the finalizer never holds the file: the moov box and the few GOPs around
the chosen times are all it fetches, and memory grows by the decoder's reference frames
(measured at MAX_FRAMES_PER_SEEK), whatever the file's size. FFmpeg encodes the JPEG too.

Best effort: a video that cannot be decoded for a poster still completes; make_poster()
returns the reason instead, for the record's `output.poster_error`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from producer.core.records import Poster
from worker.media import S3RangeReader, Watched

log = structlog.get_logger(__name__)

# The longer side of the image: a list view's tile, portrait or landscape (480x270 for a
# 1280x720 video, 270x480 for 720x1280); never scaled up.
MAX_SIDE_PX = 480
# FFmpeg's MJPEG quantiser (2 best .. 31): 3 gives ~7 KB at 480x270 and 41 dB PSNR against
# the scaled frame, about Pillow's quality 85. FFmpeg rather than Pillow: libavcodec is loaded
# already, and Pillow and its RGB copy added ~3 MB to a pool process (measured after 20
# posters; a worker is at its RSS goal), for files ~15 % smaller.
JPEG_QSCALE = 3
CANDIDATE_SHARES = (0.1, 0.3, 0.5)
# A stream with keyframes far apart (or one keyframe, as the sandbox's clips) decodes at most
# this many frames per seek; the last one decoded stands in for the asked-for time. Measured
# (one thread, a busy 2-core host, 2026-12-06): a 1080p30 clip with 8 s between keyframes
# makes its poster in 1-1.5 s, a 4K one in 6-8 s, +25 MB and +71 MB of peak RSS over ~100 MB.
MAX_FRAMES_PER_SEEK = 150
# Ranged GETs this big: PyAV reads 32 KiB at a time, and a GOP is read front to back.
READ_BLOCK_BYTES = 1024 * 1024
# Luma spread is measured on a thumbnail this wide: enough to tell black from a picture,
# and nothing next to decoding the frame.
_SCORE_WIDTH_PX = 64


class NoPoster(Exception):
    """Raised when a video yields no frame to make a poster of (its message says why)."""


@dataclass(frozen=True)
class PosterImage:
    """An encoded poster and its size in pixels."""

    data: bytes
    width: int
    height: int


def poster_key(video_key: str) -> str:
    """The poster's key, beside the video's ("videos/job_1.mp4" -> "videos/job_1.jpg"): under
    the same prefix, so a lifecycle rule that expires the videos expires the posters too."""
    return video_key.removesuffix(".mp4") + ".jpg"


def poster_size(width: int, height: int, sample_aspect: float = 1.0) -> tuple[int, int]:
    """The poster's width and height for a frame of width x height pixels of sample_aspect
    (pixel width over height; anamorphic video is shown wider than it is stored): the
    displayed shape, its longer side at most MAX_SIDE_PX, at least 1 x 1."""
    shown_w = width * (sample_aspect if sample_aspect > 0 else 1.0)
    scale = min(1.0, MAX_SIDE_PX / max(shown_w, height))
    return max(1, round(shown_w * scale)), max(1, round(height * scale))


def luma_spread(frame: av.VideoFrame) -> float:
    """The standard deviation of the frame's brightness (0-255): 0 for a black or flat frame."""
    width = min(_SCORE_WIDTH_PX, frame.width)
    height = max(1, round(frame.height * width / frame.width))
    plane = frame.reformat(width=width, height=height, format="gray").planes[0]
    # Rows are padded to line_size bytes; the padding is not picture. (Pure Python over a
    # 64-pixel-wide frame: numpy would add ~12 MB to every pool process for this one sum.)
    raw, stride = bytes(plane), plane.line_size
    pixels = b"".join(raw[y * stride : y * stride + width] for y in range(height))
    mean = sum(pixels) / len(pixels)
    return math.sqrt(max(0.0, sum(p * p for p in pixels) / len(pixels) - mean * mean))


def choose_frame(frames: Iterable[av.VideoFrame]) -> av.VideoFrame:
    """The frame with the most luma spread; the earliest among equals (only the best so far is
    held, not every candidate).

    Raises:
        NoPoster: there was no frame.
    """
    best, best_score = None, -1.0
    for frame in frames:
        score = luma_spread(frame)
        if score > best_score:
            best, best_score = frame, score
    if best is None:
        raise NoPoster("no frame could be decoded")
    return best


def candidate_frames(container: Any) -> Iterator[av.VideoFrame]:
    """The frames at CANDIDATE_SHARES of the container's first video stream (its first frame
    when the duration is unknown). A time whose frames do not decode is skipped.

    Raises:
        av.FFmpegError: not one of them decoded (the last time's error).
    """
    stream = container.streams.video[0]
    duration_s = None
    if container.duration:
        duration_s = container.duration / av.time_base
    elif stream.duration and stream.time_base:
        duration_s = stream.duration * float(stream.time_base)
    start_s = stream.start_time * float(stream.time_base) if stream.start_time else 0.0
    times_s = [start_s + share * duration_s for share in CANDIDATE_SHARES] if duration_s else [None]
    found, error = False, None
    for at_s in times_s:
        try:
            frame = _frame_at(container, stream, at_s)
        except av.FFmpegError as e:  # one damaged GOP need not cost the poster
            error = e
            continue
        if frame is not None:
            found = True
            yield frame
    if not found and error is not None:
        raise error


def _frame_at(container: Any, stream: Any, at_s: float | None) -> av.VideoFrame | None:
    """The first frame at or after at_s (the first frame for None); within
    MAX_FRAMES_PER_SEEK frames of the keyframe before it, else the last of those."""
    if at_s is not None and stream.time_base:
        # Seeking lands on the keyframe at or before the time; decode forward to it.
        container.seek(int(at_s / float(stream.time_base)), stream=stream, backward=True)
    frame = None
    for count, frame in enumerate(container.decode(stream), start=1):
        if at_s is None or frame.time is None or frame.time >= at_s - 1e-3:
            break
        if count >= MAX_FRAMES_PER_SEEK:
            break
    return frame


def render(frame: av.VideoFrame, sample_aspect: float = 1.0) -> PosterImage:
    """The frame as a JPEG of poster_size()."""
    width, height = poster_size(frame.width, frame.height, sample_aspect)
    # swscale shrinks straight from the decoder's YUV to JPEG's full-range YUV: no RGB copy.
    small = frame.reformat(width=width, height=height, format="yuvj420p", interpolation="AREA")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 1)
    encoder.options = {"qmin": str(JPEG_QSCALE), "qmax": str(JPEG_QSCALE)}
    data = b"".join(bytes(packet) for packet in [*encoder.encode(small), *encoder.encode(None)])
    return PosterImage(data, width, height)


def poster_of(fileobj: Any) -> PosterImage:
    """The poster of the MP4 in a seekable file-like object.

    Raises:
        NoPoster: no frame could be decoded.
        av.FFmpegError: PyAV could not open or decode the file.
        Exception: what fileobj raises (an S3 read failing), unchanged.
    """
    with av.open(fileobj, mode="r", format="mp4") as container:
        if not container.streams.video:
            raise NoPoster("the file has no video track")
        stream = container.streams.video[0]
        # One thread: a finalizer shares its host with other steps, and frame threads would
        # each hold frames of their own.
        stream.codec_context.thread_count = 1
        frame = choose_frame(candidate_frames(container))
        aspect = stream.sample_aspect_ratio
        return render(frame, float(aspect) if aspect else 1.0)


def make_poster(
    client: Any, bucket: str, video_key: str, size_bytes: int, metadata: dict[str, str]
) -> tuple[Poster | None, str | None]:
    """Decode a poster frame of the stored MP4 at video_key and store it beside it, with the
    video's object metadata.

    Returns:
        (the stored Poster, None), or (None, why there is none): the video completes either
        way, a poster is best effort.
    """
    reader = Watched(S3RangeReader(client, bucket, video_key, size_bytes, READ_BLOCK_BYTES))
    try:
        image = poster_of(reader)
    except Exception as e:  # best effort: nothing about a poster may fail a finished video
        if reader.error is not None:
            return _no_poster(f"reading the video back from S3 failed: {_named(reader.error)}")
        if isinstance(e, NoPoster):
            symptom = str(e)
        elif isinstance(e, av.FFmpegError):  # str(e) would name the file object, not the problem
            symptom = f"FFmpeg: {e.strerror or type(e).__name__}"
        else:  # not the video's fault that we know of
            return _no_poster(f"the poster could not be made: {_named(e)}")
        return _no_poster(f"the video could not be decoded for a poster: {symptom}")
    key = poster_key(video_key)
    try:
        client.put_object(
            Bucket=bucket, Key=key, Body=image.data, ContentType="image/jpeg", Metadata=metadata
        )
    except (BotoCoreError, ClientError) as e:
        return _no_poster(f"storing the poster failed: {_named(e)}")
    poster = Poster(bucket=bucket, key=key, size_bytes=len(image.data), width=image.width,
                    height=image.height)  # fmt: skip
    return poster, None


def _named(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:200]}"


def _no_poster(reason: str) -> tuple[None, str]:
    log.warning("no poster", reason=reason)
    return None, reason
