"""OpenAI's `input_reference` file: checked (an image the providers take, by its bytes, and
within VIDEOQUEUE_HTTP_MAX_UPLOAD_BYTES), then stored in our bucket under its sha256, so that
the job's request names the object (StoredImage) and never a URL of it.

Stored before the job is written: a crash between the two leaves an object no job names, which
the workers' sweep deletes once older than record_ttl_s (worker/uploads.py). Named by content,
a repeat of the same file (an idempotent retry) writes the same object again, which also
renews its age. boto3 comes through content.Bucket, imported on the first upload only.
"""

from __future__ import annotations

import hashlib

from producer.core.errors import ApiError
from producer.core.images import IMAGE_TYPES, image_type
from producer.core.requests import StoredImage
from producer.core.settings import Settings
from producer.http.bodies import Upload
from producer.http.content import Bucket, storage_unavailable

FIELD = "input_reference"


def checked_image(upload: Upload, settings: Settings) -> StoredImage:
    """Where the upload will be stored, and what it is (nothing is written yet).

    Raises:
        ApiError: 413 over the bound, 400 for a file that is not a JPEG, PNG or WebP image;
            each naming input_reference.
    """
    limit = settings.http_max_upload_bytes
    if len(upload.data) > limit:
        raise ApiError(
            413,
            f"input_reference is {len(upload.data)} bytes; the limit is {limit} bytes",
            code="file_too_large",
            param=FIELD,
        )
    kind = image_type(upload.data)
    if kind is None:
        raise ApiError(
            400,
            f"input_reference must be an image ({', '.join(IMAGE_TYPES)}); its bytes are not "
            f"one (sent as {upload.content_type or 'no type'})",
            code="invalid_image",
            param=FIELD,
        )
    sha256 = hashlib.sha256(upload.data).hexdigest()
    return StoredImage(
        bucket=settings.s3_bucket,
        key=f"{settings.s3_input_prefix}{sha256}",
        content_type=kind,  # type: ignore[arg-type]  # one of IMAGE_TYPES, as the field says
        sha256=sha256,
        size_bytes=len(upload.data),
    )


def store_image(bucket: Bucket, image: StoredImage, data: bytes) -> None:
    """Write the image's object (a blocking call: run it in the thread pool).

    Raises:
        ApiError: 503 when S3 cannot take it.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket.client().put_object(
            Bucket=image.bucket,
            Key=image.key,
            Body=data,
            ContentType=image.content_type,
            Metadata={"sha256": image.sha256},
        )
    except (BotoCoreError, ClientError):
        raise storage_unavailable() from None
