"""Reference images are judged by their bytes, and their size read from their header."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from pydantic import ValidationError

from producer.core.images import image_size, image_type
from producer.core.settings import Settings
from tests.unit.images import png


def _pil(kind: str, size: tuple[int, int], **options: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, kind, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "kind", "size"),
    [
        (png(720, 1280), "image/png", (720, 1280)),
        (_pil("JPEG", (1280, 720)), "image/jpeg", (1280, 720)),
        (_pil("JPEG", (33, 17), progressive=True), "image/jpeg", (33, 17)),
        (_pil("WEBP", (1024, 1792)), "image/webp", (1024, 1792)),
        (_pil("WEBP", (64, 48), lossless=True), "image/webp", (64, 48)),
    ],
)
def test_an_image_is_known_by_its_bytes_and_its_size_read(data, kind, size):
    assert image_type(data) == kind
    assert image_size(data) == size


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a....", b"%PDF-1.7", b"<svg xmlns='...'/>", b"\x89PNG\r\n\x1a\n"]
)
def test_other_files_and_truncated_headers_are_no_image_or_no_size(data):
    assert image_type(data) is None or image_size(data) is None


@pytest.mark.parametrize(
    ("prefix", "template"),
    [("videos/", "videos/{job_id}.mp4"), ("v/", "v/x/{job_id}.mp4"), ("", "videos/{job_id}")],
)
def test_the_images_prefix_may_not_hold_the_videos(prefix, template):
    """The sweep deletes what is under the images' prefix by age: never a video."""
    with pytest.raises(ValidationError, match="VIDEOQUEUE_S3_INPUT_PREFIX|s3_input_prefix"):
        Settings(s3_input_prefix=prefix, s3_key_template=template)
    assert Settings(s3_key_template=template).s3_input_prefix == "inputs/"
