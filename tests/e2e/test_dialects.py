"""Each shipped dialect end to end through real workers, against the sandbox speaking it:
create, poll, progress, completion with the file in S3, failure with the provider's reason,
and a cancel that reaches the provider."""

from __future__ import annotations

import pytest

from ops.sandbox.state import FAILURES
from producer import JobStatus, cancel, enqueue, get, wait
from tests.e2e.conftest import BUCKET, eventually

# (VIDEOQUEUE_API_DIALECT, VIDEOQUEUE_API_FORMAT, the sandbox's dialect)
DIALECTS = {
    "router-openai": ("router", "openai", "router"),
    "router-unified": ("router", "unified", "router"),
    "openai": ("openai", "openai", "openai"),
}


def _pipeline(make_pipeline, name: str, **knobs):
    dialect, api_format, sandbox = DIALECTS[name]
    env = {"VIDEOQUEUE_API_DIALECT": dialect, "VIDEOQUEUE_API_FORMAT": api_format}
    return make_pipeline(sandbox={"flavor": sandbox, "dialect": sandbox, **knobs}, env=env)


@pytest.mark.parametrize("name", DIALECTS)
def test_a_job_completes_with_progress_and_its_file_in_s3(make_pipeline, s3_client, name):
    # Slow enough (a few seconds) that polls see the generation part-way.
    p = _pipeline(make_pipeline, name, fast=False, time_scale=0.25, jitter=0)
    job_id = enqueue(p.request(), settings=p.settings)
    seen = eventually(lambda: 0 < (get(job_id, settings=p.settings).progress or 0) < 100, 30)
    assert seen
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.progress == 100 and record.output is not None
    data = s3_client.get_object(Bucket=BUCKET, Key=record.output.key)["Body"].read()
    assert data[4:8] == b"ftyp" and len(data) == record.output.size_bytes
    # The task's own id is in the file's free box: the sandbox's bytes for this very task.
    assert record.provider_task_id.encode() in data
    task = p.sandbox.stats()["tasks"][record.provider_task_id]
    assert task["creates"] == 1 and task["downloads"] >= 1


@pytest.mark.parametrize("name", DIALECTS)
def test_a_failed_generation_fails_the_job_with_the_providers_reason(make_pipeline, name):
    p = _pipeline(make_pipeline, name, fail_rate=1.0)
    record = wait(enqueue(p.request(), settings=p.settings), 60, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert (record.error.code, record.error.message) in FAILURES


@pytest.mark.parametrize("name", DIALECTS)
def test_a_cancel_reaches_the_provider(make_pipeline, name):
    p = _pipeline(make_pipeline, name, stuck_rate=1.0)
    job_id = enqueue(p.request(), settings=p.settings)
    task_id = eventually(lambda: get(job_id, settings=p.settings).provider_task_id, 30)
    cancel(job_id, settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["deleted"] == 1, 30)
    assert task_id not in p.sandbox.stats()["tasks"]
    assert get(job_id, settings=p.settings).status is JobStatus.CANCELLED
