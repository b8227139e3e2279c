"""A finished job's MP4 (or its poster frame), streamed from our bucket; and `video.url`, the
URL that fetches it, signed (when the service has a URL secret) so that it works without the
caller's key.

boto3 is imported on the first download only: the rest of the service never needs it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from starlette.responses import StreamingResponse

from producer.core.errors import ApiError
from producer.core.records import Output, Poster
from producer.core.settings import S3_CLIENT_OPTIONS, Settings

CHUNK_BYTES = 1024 * 1024
_DIGITS = re.compile(r"[0-9]{1,12}")


def content_path(job_id: str) -> str:
    """The content route of a job, from the service's root."""
    return f"/v1/videos/{quote(job_id, safe='')}/content"


def content_url(settings: Settings, base_url: str, job_id: str, now_s: float) -> str:
    """`video.url`: the job's content route, absolute, signed when a URL secret is set."""
    url = (settings.http_public_url or base_url).rstrip("/") + content_path(job_id)
    if settings.http_url_secret is None:
        return url
    expires = int(now_s + settings.http_url_ttl_s)
    return f"{url}?expires={expires}&signature={_signature(settings, job_id, expires)}"


def signature_holds(
    settings: Settings, job_id: str, expires: str | None, signature: str | None, now_s: float
) -> bool:
    """Whether a content URL's signature is ours, for this job, and not expired."""
    if settings.http_url_secret is None or not expires or not signature:
        return False
    if not _DIGITS.fullmatch(expires) or int(expires) < now_s:
        return False
    expected = _signature(settings, job_id, int(expires))
    return hmac.compare_digest(expected.encode(), signature.encode(errors="replace"))


def _signature(settings: Settings, job_id: str, expires: int) -> str:
    assert settings.http_url_secret is not None
    key = settings.http_url_secret.get_secret_value().encode()
    return hmac.new(key, f"{job_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


class Bucket:
    """Reads finished videos from S3 (one boto3 client per service, built on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.client(
                    "s3",
                    endpoint_url=self.settings.s3_endpoint_url,
                    region_name=self.settings.s3_region,
                    config=Config(**S3_CLIENT_OPTIONS),
                )
            return self._client

    def open(self, stored: Output | Poster, range_header: str | None) -> StreamingResponse:
        """The object (or the asked-for range of it) as a streamed answer.

        Args:
            stored: the job's MP4 (a download: attachment) or its poster (shown: inline).

        Raises:
            ApiError: 404 when the object is gone, 416 for a range outside it, 503 when S3
                cannot be reached.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        what = "video's file" if isinstance(stored, Output) else "poster frame"
        args: dict[str, Any] = {"Bucket": stored.bucket, "Key": stored.key}
        if range_header:
            args["Range"] = range_header
        try:
            answer = self.client().get_object(**args)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ApiError(404, f"the {what} is no longer stored", code="not_found") from None
            if code == "InvalidRange":
                raise ApiError(
                    416, f"range not satisfiable (size {stored.size_bytes})",
                    code="range_not_satisfiable",
                    headers={"Content-Range": f"bytes */{stored.size_bytes}"},
                ) from None  # fmt: skip
            raise _unavailable() from None
        except BotoCoreError:
            raise _unavailable() from None
        disposition = "attachment" if isinstance(stored, Output) else "inline"
        headers = {
            "Content-Length": str(answer["ContentLength"]),
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'{disposition}; filename="{stored.key.rsplit("/", 1)[-1]}"',
            "ETag": answer.get("ETag", ""),
        }
        status = 200
        if answer.get("ContentRange"):
            status = 206
            headers["Content-Range"] = answer["ContentRange"]
        return StreamingResponse(
            _chunks(answer["Body"]), status_code=status, headers=headers,
            media_type=stored.content_type,
        )  # fmt: skip


def _chunks(body: Any) -> Iterator[bytes]:
    # A sync iterator: Starlette runs it in its thread pool, one chunk at a time, so a slow
    # client holds a thread and a connection to S3, not the event loop or memory.
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


def _unavailable() -> ApiError:
    return ApiError(
        503, "storage is unavailable; try again shortly", code="storage_unavailable",
        type_="server_error", headers={"Retry-After": "5"},
    )  # fmt: skip
