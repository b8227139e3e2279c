"""A worker SIGKILLed mid-upload leaves its multipart upload open; a later worker aborts it,
and the bucket carries the lifecycle rule that would too."""

from __future__ import annotations

import time

from producer import JobStatus, enqueue, wait
from tests.e2e.conftest import BUCKET, eventually
from worker.uploads import RULE_ID


def _uploads(s3_client, job_id):
    found = s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"videos/{job_id}")
    return [u["UploadId"] for u in found.get("Uploads", [])]


def test_an_upload_orphaned_by_a_killed_worker_is_aborted_by_a_later_one(make_pipeline, s3_client):
    # A 12 MiB file over 6 s: the worker is mid-upload (its first 5 MiB part sent) when killed.
    p = make_pipeline(
        sandbox={"file_padding_bytes": 12 << 20, "file_stream_s": 6},
        env={"VIDEOQUEUE_STEP_TIMEOUT_S": "10", "VIDEOQUEUE_LEASE_S": "2",
             "VIDEOQUEUE_S3_PART_SIZE_BYTES": str(5 << 20)},
    )  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    orphan = eventually(lambda: _uploads(s3_client, job_id), 30, 0.05)[0]
    p.workers[-1].kill()
    p.start_worker()
    assert wait(job_id, 60, settings=p.settings).status is JobStatus.COMPLETED
    assert orphan in _uploads(s3_client, job_id)  # nobody could abort it: its owner died

    # Past step_timeout_s + lease_s no step can own it; the next finalize's sweep aborts it.
    p.sandbox.configure(file_padding_bytes=0, file_stream_s=0)
    time.sleep(13)
    wait(enqueue(p.request(), settings=p.settings), 60, settings=p.settings)
    eventually(lambda: orphan not in _uploads(s3_client, job_id), 20)

    rules = s3_client.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    rule = next(r for r in rules if r["ID"] == RULE_ID)
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rule["Filter"] == {"Prefix": "videos/"}
