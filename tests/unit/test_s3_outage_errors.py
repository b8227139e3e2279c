"""Which S3 errors are an outage of our storage (wait for it) and which are not."""

from __future__ import annotations

import httpx
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from worker.storage import storage_outage


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def test_no_connection_a_timeout_and_a_5xx_from_s3_are_outages() -> None:
    assert storage_outage(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert storage_outage(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert storage_outage(_client_error("InternalError", 500))
    assert storage_outage(_client_error("SlowDown", 503))


def test_a_refusal_of_ours_and_a_provider_download_failure_are_not() -> None:
    assert not storage_outage(_client_error("NoSuchBucket", 404))
    assert not storage_outage(_client_error("AccessDenied", 403))
    assert not storage_outage(httpx.ConnectError("the provider's CDN is down"))
    assert not storage_outage(OSError("download answered HTTP 502"))
