"""The worker reads a stored reference image only from our bucket's input prefix, and only
if its bytes are the ones the request names."""

from __future__ import annotations

import hashlib
import io

import pytest

from producer.core.errors import PermanentError
from producer.core.requests import StoredImage
from producer.core.settings import Settings
from worker.inputs import BucketImages


class _S3:
    """Just enough of a boto3 client: one object per key."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.asked: list[str] = []

    def get_object(self, *, Bucket: str, Key: str) -> dict:  # noqa: N803 (boto3's names)
        self.asked.append(Key)
        return {"Body": io.BytesIO(self.objects[Key])}


def _image(data: bytes, **fields: str) -> StoredImage:
    digest = hashlib.sha256(data).hexdigest()
    base = {"bucket": "videoqueue", "key": f"inputs/{digest}", "content_type": "image/png",
            "sha256": digest, "size_bytes": len(data)}  # fmt: skip
    return StoredImage(**{**base, **fields})


def test_an_image_is_read_and_checked_against_its_digest():
    data = b"\x89PNG\r\n\x1a\nimage"
    image = _image(data)
    s3 = _S3({image.key: data})
    assert BucketImages(lambda: s3, Settings()).read(image) == data
    s3.objects[image.key] = b"\x89PNG\r\n\x1a\nanother"  # replaced behind our back
    with pytest.raises(PermanentError) as e:
        BucketImages(lambda: s3, Settings()).read(image)
    assert e.value.code == "invalid_input_reference"


@pytest.mark.parametrize(
    "where", [{"key": "videos/job_1.mp4"}, {"bucket": "elsewhere"}, {"key": "inputs/other"}]
)
def test_an_object_outside_our_input_prefix_is_never_read(where):
    data = b"\x89PNG\r\n\x1a\nimage"
    s3 = _S3({"videos/job_1.mp4": data, "inputs/other": data})
    with pytest.raises(PermanentError) as e:
        BucketImages(lambda: s3, Settings()).read(_image(data, **where))
    assert e.value.code == "invalid_input_reference" and s3.asked == []
