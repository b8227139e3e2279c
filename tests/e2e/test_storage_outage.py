"""An outage of our own S3 while jobs finalize: the jobs wait for it and complete, with their
copy attempts unspent (they belong to the provider's file, not to our bucket)."""

from __future__ import annotations

import hashlib
import time

import pytest

from bench.faults import Mode, TcpProxy
from producer import JobStatus, enqueue, get, wait
from tests.e2e.conftest import BUCKET, eventually

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_jobs_finalizing_while_s3_refuses_connections_complete_once_it_is_back(
    make_pipeline, s3, s3_client
):
    host, port = s3.endpoint_url.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    try:
        # Copy rounds every 0.2-1 s: without waiting for S3, four rounds fail the job in
        # a few seconds, well within the outage.
        p = make_pipeline(env={"VIDEOQUEUE_S3_ENDPOINT_URL": proxy.url})
        proxy.set_mode(Mode.REFUSE)
        ids = [enqueue(p.request(), settings=p.settings) for _ in range(2)]
        finalizing = [JobStatus.FINALIZING] * 2
        eventually(lambda: [get(i, settings=p.settings).status for i in ids] == finalizing, 30)
        time.sleep(8)
        assert [get(i, settings=p.settings).status for i in ids] == finalizing
        proxy.set_mode(Mode.PASS)
        records = [wait(i, 60, settings=p.settings) for i in ids]
    finally:
        proxy.close()
    assert [r.status for r in records] == [JobStatus.COMPLETED] * 2, [r.error for r in records]
    assert all(r.copy_attempts <= 2 for r in records), [r.copy_attempts for r in records]
    for r in records:
        assert r.output is not None
        data = s3_client.get_object(Bucket=BUCKET, Key=r.output.key)["Body"].read()
        assert data == p.served_bytes(r.provider_task_id)
        assert hashlib.sha256(data).hexdigest() == r.output.sha256
