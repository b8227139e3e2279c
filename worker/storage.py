"""Streaming a download into S3 with a multipart upload, never holding the file in memory."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from producer.core.errors import (
    DownloadTimeout,
    FileRefused,
    FileUnreachable,
    InvalidVideo,
    RetryableError,
    TooLarge,
)
from producer.core.settings import S3_CLIENT_OPTIONS, Settings
from worker import metrics
from worker.egress import CREDENTIALS, ConnectionDeadline, Credentials
from worker.media import check_ftyp

# What a failed copy may raise that another attempt may cure: S3 down or slow, a body cut
# short, bytes that do not parse as a video (a truncated transfer). A file host that does not
# answer at all, or refuses the URL, raises FileUnreachable or FileRefused instead.
COPY_FAILURES = (
    httpx.HTTPError, OSError, RetryableError, BotoCoreError, ClientError, InvalidVideo,
)  # fmt: skip


def storage_outage(e: BaseException) -> bool:
    """Whether e says our S3 is down or failing (no connection, a timeout, a 5xx), as
    opposed to the provider's file or a refusal of ours (4xx: a wrong bucket or key)."""
    if isinstance(e, BotoConnectionError | HTTPClientError):
        return True
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= 500 or e.response.get("Error", {}).get("Code") in _S3_BUSY
    return False


# S3's error codes for "try again later", whatever status code a server pairs them with.
_S3_BUSY = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})


# A file host's statuses that say "not now" rather than "not this URL": waited out like a 5xx.
_NOT_NOW = frozenset({408, 425, 429})


def refusal(status_code: int) -> FileUnreachable | FileRefused:
    """What a file host's answer other than 2xx means: FileUnreachable for a 5xx, 408, 425
    or 429 (the host is down or busy: the same URL later); FileRefused for any other (401,
    403: a signature expired or refused; 404, 410: a file deleted, or not yet on the CDN;
    400: Google Cloud Storage's expired signature; ...): a fresh URL from the provider."""
    if status_code >= 500 or status_code in _NOT_NOW:
        return FileUnreachable(f"the file host answered HTTP {status_code}")
    return FileRefused(f"the file host answered HTTP {status_code}")


# Query parameters that carry a signed URL's expiry as Unix seconds (the sandbox's `exp`; S3's
# SigV2 and CloudFront's `Expires`; ...), and pairs of a start time and a lifetime (S3's and
# Google Cloud Storage's V4 signatures).
_EXPIRES_AT = ("exp", "expires", "x-expires")
_SIGNED_FOR = (("x-amz-date", "x-amz-expires"), ("x-goog-date", "x-goog-expires"))
# Unix seconds between 2001 and 2286: a number outside is not a time.
_EPOCH_S = (1e9, 1e10)


def url_expires_at(url: str) -> float | None:
    """When a signed file URL stops working (Unix seconds), as its query says; None when it
    says nothing we can read (an unsigned or opaque URL: only a refusal tells)."""
    try:
        query = {k.lower(): v for k, v in httpx.URL(url).params.multi_items()}
    except httpx.InvalidURL:
        return None  # the download will say what is wrong with it
    for name in _EXPIRES_AT:
        try:
            at = float(query.get(name, ""))
        except ValueError:
            continue
        if _EPOCH_S[0] <= at < _EPOCH_S[1]:
            return at
    for start, lifetime in _SIGNED_FOR:
        try:
            signed = datetime.strptime(query.get(start, ""), "%Y%m%dT%H%M%SZ")
            return signed.replace(tzinfo=UTC).timestamp() + float(query.get(lifetime, ""))
        except ValueError:
            continue
    if "sig" in query and (end := query.get("se")):  # an Azure SAS: an ISO 8601 end time
        try:
            return datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def s3_client(settings: Settings, **config: Any) -> Any:
    """A boto3 S3 client for the configured endpoint; credentials come from boto3's chain.

    Args:
        **config: botocore Config options over ours (e.g. short timeouts for a check).
    """
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=Config(**{**S3_CLIENT_OPTIONS, **config}),
    )


# Parts of a multipart upload that nobody completed or aborted (its worker died mid-copy)
# are kept, and billed, until a rule like this removes them (`videoqueue doctor` checks it).
ABORT_INCOMPLETE_UPLOADS = {
    "Rules": [{
        "ID": "abort-incomplete-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }]
}  # fmt: skip


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create the bucket unless it exists, with a rule that aborts incomplete uploads (an
    existing bucket's lifecycle rules are left as they are)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as e2:
            if e2.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
            return  # another worker made it (and its rule)
        client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration=ABORT_INCOMPLETE_UPLOADS
        )


@dataclass
class Upload:
    size_bytes: int
    sha256: str


def stream_to_s3(
    chunks: Iterable[bytes],
    client: Any,
    bucket: str,
    key: str,
    *,
    metadata: dict[str, str],
    part_size_bytes: int,
    parts_in_flight: int,
    expected_size_bytes: int | None = None,
) -> Upload:
    """Copy a stream of bytes into bucket/key as one multipart upload.

    The first bytes must be an MP4 `ftyp` box; sha256 and size are computed on the way.
    Parts upload in background threads while the next one downloads; memory stays near
    (parts_in_flight + 2) x part_size_bytes whatever the file's size. A failure aborts the
    upload, so no half object and no orphaned parts are left.

    Raises:
        PermanentError: the bytes are not an MP4.
        IOError: the stream ended short of expected_size_bytes (a truncated download).
    """
    digest = hashlib.sha256()
    upload = client.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType="video/mp4", Metadata=metadata
    )
    upload_id = upload["UploadId"]
    pending: list[Future[dict[str, Any]]] = []
    parts: list[dict[str, Any]] = []
    size = 0
    checked = False
    buffer = bytearray()

    def send(number: int, data: bytes) -> dict[str, Any]:
        answer = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    try:
        with ThreadPoolExecutor(max_workers=parts_in_flight) as pool:

            def flush() -> None:
                # In the step's log context: a thread starts with none, and S3's lines name
                # no job.
                work = contextvars.copy_context().run
                pending.append(pool.submit(work, send, len(pending) + 1, bytes(buffer)))
                buffer.clear()
                # Backpressure: wait for the oldest part before reading more.
                while sum(not f.done() for f in pending) >= parts_in_flight:
                    next(f for f in pending if not f.done()).result()

            for chunk in chunks:
                if not checked and len(buffer) + len(chunk) >= 8:
                    check_ftyp(bytes(buffer[:8]) + chunk[:8])
                    checked = True
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                if len(buffer) >= part_size_bytes:
                    flush()
            if not checked:
                check_ftyp(bytes(buffer))
            if expected_size_bytes is not None and size != expected_size_bytes:
                raise OSError(
                    f"download ended at {size} of {expected_size_bytes} bytes (truncated)"
                )
            if buffer or not pending:
                flush()
            parts = [f.result() for f in pending]
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        # An abort that fails means the upload is gone already; the first error matters.
        with contextlib.suppress(ClientError):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    metrics.S3_COPIED_BYTES.inc(size)
    return Upload(size_bytes=size, sha256=digest.hexdigest())


def copy_url_to_s3(
    http: httpx.Client,
    url: str,
    credentials: Credentials,
    s3: Any,
    key: str,
    metadata: dict[str, str],
    settings: Settings,
    *,
    provider: str,
) -> Upload:
    """Stream the file at url (the named provider's video) into the bucket under key.

    The credentials go to their own origin only, on every hop of a redirect: http must be a
    client over worker/egress.py's GuardedTransport, which binds them (a CDN never sees the
    API key, whatever header or query parameter carries it).

    Raises:
        FileUnreachable: no answer came (no connection, a reset, a timeout before the answer's
            head), or a 5xx, 408, 425 or 429 did.
        FileRefused: another answer that is not a success (refusal()).
        httpx.HTTPError, OSError: the body broke off or came short, after a 2xx.
    """
    s = settings
    deadline = time.monotonic() + s.download_deadline_s
    # No read may wait past the deadline either (a stalled connection answers nothing).
    timeout_s = min(s.download_timeout_s, s.download_deadline_s)
    # Its own connection (and each redirect's), so that the deadline can shut it down.
    headers = {"connection": "close"}
    hard = ConnectionDeadline(s.download_deadline_s)
    response = None
    try:
        with hard, http.stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=timeout_s,
            extensions={"trace": hard.trace, CREDENTIALS: credentials},
        ) as response:  # fmt: skip
            metrics.provider_request(provider, "download", response)
            if not response.is_success:
                raise refusal(response.status_code)
            expected = response.headers.get("content-length")
            encoded = response.headers.get("content-encoding", "identity") != "identity"
            try:
                expected_size = int(expected) if expected and not encoded else None
            except ValueError:
                expected_size = None  # an unparsable length is checked by the probe instead
            if expected_size is not None and expected_size > s.max_video_bytes:
                raise TooLarge(f"the video is {expected_size} bytes; at most {s.max_video_bytes}")
            return stream_to_s3(
                _bounded(response.iter_bytes(), deadline, s, hard),
                s3,
                s.s3_bucket,
                key,
                metadata=metadata,
                part_size_bytes=s.s3_part_size_bytes,
                parts_in_flight=s.s3_parts_in_flight,
                expected_size_bytes=expected_size,
            )
    except httpx.HTTPError as e:
        if hard.fired:  # the connection was shut down at the deadline (a dripping head)
            raise DownloadTimeout(f"the download took over {s.download_deadline_s:g} s") from None
        if (
            response is None
            and isinstance(e, httpx.TransportError)
            and not isinstance(e, httpx.UnsupportedProtocol)
        ):
            # Nothing came back: the host is down, resetting or silent, not the file broken.
            raise FileUnreachable(f"{type(e).__name__}: {str(e)[:200]}") from None
        raise
    finally:
        if response is None:  # no answer came: counted once, as "error"
            metrics.provider_request(provider, "download", None)


def _bounded(
    chunks: Iterable[bytes], deadline: float, settings: Settings, hard: ConnectionDeadline
) -> Iterator[bytes]:
    """chunks as they arrive (each network read), stopped at VIDEOQUEUE_MAX_VIDEO_BYTES and
    at the download's deadline: a body that never ends or that drips a byte every few
    seconds must not hold a worker for hours (every single read is within its timeout)."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > settings.max_video_bytes:
            raise TooLarge(f"the video is over {settings.max_video_bytes} bytes")
        if time.monotonic() > deadline:
            break
        yield chunk
    if time.monotonic() > deadline or hard.fired:
        # (A body without a length ends where the deadline's shutdown cut it: not its end.)
        raise DownloadTimeout(
            f"the download took over {settings.download_deadline_s:g} s ({size} bytes read)"
        )
