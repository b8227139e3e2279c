"""A request's stored reference image (an input_reference upload the HTTP service put in our
bucket, producer/http/uploads.py), read for a provider that takes the file, or presigned for
one that takes a URL. The provider client asks for it at submit time (worker/provider.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from producer.core.errors import PermanentError, RetryableError
from producer.core.requests import StoredImage
from producer.core.settings import Settings

# How long a presigned URL of an image works: the provider fetches it when it takes the task
# (a router relays it at once), and a new one is made for every create sent.
IMAGE_URL_TTL_S = 3600


class BucketImages:
    """Reads and presigns stored images, in our bucket under the input prefix only (the
    request names the object: any other one is refused, whoever wrote the request).

    Args:
        client: returns the boto3 S3 client (asked only for a request with an image, so that
            a worker with none never connects to S3 to submit).
        settings: the bucket and input prefix the images may be in.
    """

    def __init__(self, client: Callable[[], Any], settings: Settings) -> None:
        self.client = client
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_input_prefix

    def _check(self, image: StoredImage) -> None:
        if image.bucket != self.bucket or image.key != f"{self.prefix}{image.sha256}":
            raise PermanentError(
                f"the reference image is not one of ours ({image.bucket}/{image.key})",
                code="invalid_input_reference",
            )

    def read(self, image: StoredImage) -> bytes:
        """The image's bytes, checked against its sha256.

        Raises:
            RetryableError: storage did not answer (nothing was sent to the provider).
            PermanentError: the object is gone, or its bytes are not the request's.
        """
        self._check(image)
        try:
            data: bytes = (
                self.client().get_object(Bucket=image.bucket, Key=image.key)["Body"].read()
            )
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise PermanentError(
                    "the reference image is no longer stored (kept record_ttl_s)",
                    code="input_reference_missing",
                ) from None
            raise _storage_down(e) from None
        except BotoCoreError as e:
            raise _storage_down(e) from None
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise PermanentError(
                "the stored reference image is not the one uploaded (sha256 differs)",
                code="invalid_input_reference",
            )
        return data

    def url(self, image: StoredImage) -> str:
        """A GET URL of the image, presigned for IMAGE_URL_TTL_S (computed here: no call)."""
        self._check(image)
        url: str = self.client().generate_presigned_url(
            "get_object",
            Params={"Bucket": image.bucket, "Key": image.key},
            ExpiresIn=IMAGE_URL_TTL_S,
        )
        return url


def _storage_down(e: Exception) -> RetryableError:
    return RetryableError(
        f"reading the reference image: {type(e).__name__}",
        code="storage_unavailable",
        not_taken=True,
    )
