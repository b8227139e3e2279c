"""Poster frames through real workers, Redis, SeaweedFS, the sandbox and a receiver: stored
beside the MP4, described in the record and the webhook, and best effort."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from producer import JobStatus, enqueue, wait
from tests.e2e.conftest import BUCKET


def _image(s3_client, bucket: str, key: str) -> tuple[Image.Image, dict]:
    obj = s3_client.get_object(Bucket=bucket, Key=key)
    image = Image.open(io.BytesIO(obj["Body"].read()))
    image.load()
    return image, obj


def test_a_completed_job_has_a_poster_beside_its_mp4_and_its_webhook_carries_it(
    make_pipeline, s3_client
):
    p = make_pipeline()
    job_id = enqueue(p.request(size="1280x720", duration=4, metadata={"user": "u1"}),
                     settings=p.settings)  # fmt: skip
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    out = record.output
    assert out.poster is not None and out.poster_error is None, out.poster_error
    poster = out.poster
    assert (poster.bucket, poster.key) == (BUCKET, f"videos/{job_id}.jpg")
    assert poster.content_type == "image/jpeg"

    image, obj = _image(s3_client, poster.bucket, poster.key)
    assert obj["ContentType"] == "image/jpeg" and obj["ContentLength"] == poster.size_bytes
    assert obj["Metadata"]["job-id"] == job_id
    assert image.format == "JPEG" and image.size == (poster.width, poster.height) == (480, 270)
    # The sandbox's clip opens on a black frame: the poster is its picture, not that.
    assert float(np.std(np.asarray(image.convert("L")))) > 30
    colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 100  # a picture, not one flat tone

    delivery = p.receiver.wait_for(lambda d: d.verified, timeout_s=20)
    sent = json.loads(delivery.body)["data"]["output"]
    assert sent["poster"] == poster.model_dump(mode="json") and sent["poster_error"] is None


def test_a_video_whose_frames_do_not_decode_completes_without_a_poster_saying_why(
    make_pipeline, s3_client
):
    p = make_pipeline(sandbox={"garbled_frames_rate": 1.0})
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.copy_attempts == 1  # the shape probed: nothing was retried for a poster
    out = record.output
    assert out.poster is None
    assert out.poster_error.startswith("the video could not be decoded for a poster: FFmpeg:")
    found = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"videos/{job_id}")
    assert [o["Key"] for o in found.get("Contents", [])] == [out.key]  # the MP4 alone

    delivery = p.receiver.wait_for(lambda d: d.verified, timeout_s=20)
    sent = json.loads(delivery.body)["data"]["output"]
    assert sent["poster"] is None and sent["poster_error"] == out.poster_error
    assert p.sandbox.stats()["totals"]["faults"] == {"garbled_frames": 1}
