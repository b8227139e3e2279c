"""Poster frames (worker/poster.py) on clips encoded here: which frame, what size, what bytes."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from PIL import Image

from ops.sandbox.media import encode_mp4, garble_frames
from worker.poster import (
    MAX_SIDE_PX,
    NoPoster,
    choose_frame,
    luma_spread,
    make_poster,
    poster_key,
    poster_of,
    poster_size,
)
from worker.uploads import key_prefix

W, H = 160, 96
FLAT, BLACK = 128, 16


def _stripes(width: int = W, height: int = H, period: int = 16) -> np.ndarray:
    """A picture with plenty of luma spread: vertical stripes, dark and light."""
    row = np.where((np.arange(width) // (period // 2)) % 2 == 0, 40, 220).astype(np.uint8)
    return np.tile(row, (height, 1))


def _clip(pictures: list[np.ndarray], fps: int = 10) -> bytes:
    """An H.264 MP4 of grey pictures (one per frame), keyframes 2 s apart."""
    height, width = pictures[0].shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast", "g": str(2 * fps)}
        for i, luma in enumerate(pictures):
            plane = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
            plane[:height] = luma
            frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def _flat(level: int) -> np.ndarray:
    return np.full((H, W), level, dtype=np.uint8)


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_a_clip_that_opens_on_black_gets_a_poster_of_its_picture_not_its_first_frame():
    clip = encode_mp4(640, 360, 4)  # the sandbox's: frame 0 is black
    with av.open(io.BytesIO(clip)) as container:
        first = next(container.decode(video=0))
    assert luma_spread(first) < 1

    poster = poster_of(io.BytesIO(clip))
    image = _decoded(poster.data)
    assert image.format == "JPEG" and image.size == (poster.width, poster.height) == (480, 270)
    assert float(np.std(np.asarray(image.convert("L")))) > 30


def test_the_candidate_with_the_most_luma_spread_wins_over_a_cut_to_black_and_a_flat_frame():
    # 10 s at 10 fps: black around 10 %, stripes around 30 %, flat grey around 50 %.
    pictures = [_flat(BLACK)] * 20 + [_stripes()] * 20 + [_flat(FLAT)] * 60
    poster = poster_of(io.BytesIO(_clip(pictures)))
    luma = np.asarray(_decoded(poster.data).convert("L"), dtype=float)
    assert luma.std() > 60  # the stripes, not black (0) nor grey (0)
    assert (poster.width, poster.height) == (W, H)  # never scaled up


def test_among_equally_varied_frames_the_earliest_is_chosen():
    frames = [av.VideoFrame.from_ndarray(np.dstack([p] * 3), format="rgb24")
              for p in (_flat(FLAT), _stripes(), _stripes(), _flat(BLACK))]  # fmt: skip
    assert choose_frame(frames) is frames[1]
    with pytest.raises(NoPoster):
        choose_frame([])


@pytest.mark.parametrize(
    ("shape", "aspect", "expected"),
    [
        ((1280, 720), 1.0, (480, 270)),  # landscape: the width bounded
        ((720, 1280), 1.0, (270, 480)),  # portrait: the height bounded
        ((1920, 1080), 1.0, (480, 270)),
        ((64, 48), 1.0, (64, 48)),  # small: kept as it is
        ((1440, 1080), 4 / 3, (480, 270)),  # anamorphic: shown 1920 wide
        ((5000, 2), 1.0, (480, 1)),  # never 0 pixels
    ],
)
def test_poster_size_keeps_the_shown_aspect_within_the_longest_side(shape, aspect, expected):
    width, height = poster_size(*shape, aspect)
    assert (width, height) == expected
    assert max(width, height) <= MAX_SIDE_PX


def test_a_portrait_clip_gets_a_portrait_poster():
    poster = poster_of(io.BytesIO(encode_mp4(720, 1280, 2)))
    assert _decoded(poster.data).size == (poster.width, poster.height) == (270, 480)


def test_a_clip_whose_frames_are_garbage_raises_instead_of_giving_a_poster():
    with pytest.raises(av.FFmpegError):
        poster_of(io.BytesIO(garble_frames(encode_mp4(320, 180, 4))))


@pytest.mark.parametrize("template", ["videos/{job_id}.mp4", "tenant-a/{job_id}"])
def test_the_poster_sits_beside_the_video_under_the_prefix_a_lifecycle_rule_expires(template):
    video = template.format(job_id="job_1")
    assert poster_key(video) == video.removesuffix(".mp4") + ".jpg" != video
    assert poster_key(video).startswith(key_prefix(template))


class _Bucket:
    """A stand-in S3 client holding one object, for make_poster's ranged reads and its put."""

    def __init__(self, data: bytes, *, read_fails: bool = False, put_fails: bool = False):
        self.data, self.read_fails, self.put_fails = data, read_fails, put_fails
        self.puts: list[dict] = []

    def get_object(self, *, Bucket, Key, Range):
        if self.read_fails:
            raise EndpointConnectionError(endpoint_url="http://s3.invalid")
        start, end = map(int, Range.removeprefix("bytes=").split("-"))
        return {"Body": io.BytesIO(self.data[start : end + 1])}

    def put_object(self, **kwargs):
        if self.put_fails:
            raise ClientError({"Error": {"Code": "InternalError"}}, "PutObject")
        self.puts.append(kwargs)


def test_make_poster_stores_the_jpeg_beside_the_video_with_its_metadata():
    clip = encode_mp4(640, 360, 4)
    bucket = _Bucket(clip)
    poster, error = make_poster(bucket, "b", "videos/job_1.mp4", len(clip), {"job-id": "job_1"})
    assert error is None and poster is not None
    (put,) = bucket.puts
    assert (put["Bucket"], put["Key"], put["ContentType"]) == (
        "b",
        "videos/job_1.jpg",
        "image/jpeg",
    )
    assert put["Metadata"] == {"job-id": "job_1"} and len(put["Body"]) == poster.size_bytes
    assert _decoded(put["Body"]).size == (poster.width, poster.height) == (480, 270)


@pytest.mark.parametrize(
    ("bucket", "reason"),
    [
        (_Bucket(garble_frames(encode_mp4(320, 180, 4))),
         "the video could not be decoded for a poster: FFmpeg: Invalid data"),
        (_Bucket(encode_mp4(320, 180, 4), read_fails=True),
         "reading the video back from S3 failed: EndpointConnectionError"),
        (_Bucket(encode_mp4(320, 180, 4), put_fails=True),
         "storing the poster failed: ClientError"),
    ],
    ids=["frames garbled", "S3 read fails", "S3 put fails"],
)  # fmt: skip
def test_make_poster_gives_no_poster_and_says_why_instead_of_raising(bucket, reason):
    poster, error = make_poster(bucket, "b", "videos/job_1.mp4", len(bucket.data), {})
    assert poster is None and error.startswith(reason)
    assert bucket.puts == []
