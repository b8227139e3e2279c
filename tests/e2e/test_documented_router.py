"""Against a router that serves only what the seed documents (upstream-api.txt): both create
formats, polled at GET /v1/videos/{task_id}, and a missing task as new-api answers it."""

from __future__ import annotations

import time

import pytest

from producer import JobStatus, enqueue, get, wait
from tests.e2e.conftest import BUCKET, eventually
from tests.e2e.sandbox_helpers import create, running

DOCUMENTED = {"routes": "documented"}


@pytest.mark.parametrize("api_format", ["openai", "unified"])
def test_both_formats_complete_against_only_the_documented_routes(
    make_pipeline, s3_client, api_format
):
    p = make_pipeline(sandbox=DOCUMENTED, env={"VIDEOQUEUE_API_FORMAT": api_format})
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.output is not None
    obj = s3_client.get_object(Bucket=BUCKET, Key=record.output.key)
    assert obj["Body"].read()[4:8] == b"ftyp"
    stats = p.sandbox.stats()
    task = stats["tasks"][record.provider_task_id]
    assert task["kind"] == ("videos" if api_format == "openai" else "unified")
    assert task["status_queries"] >= 1
    # Every call went to a route the seed documents: none was refused as unknown.
    codes = stats["totals"]["responses_by_code"]
    assert not {"404", "405"} & set(codes), codes


@pytest.mark.parametrize("api_format", ["openai", "unified"])
def test_a_task_the_router_no_longer_has_fails_the_job_task_not_found_promptly(
    make_pipeline, api_format
):
    """new-api answers a missing task with HTTP 400 and "task_not_exist": not a retry."""
    p = make_pipeline(
        sandbox={**DOCUMENTED, "stuck_rate": 1.0}, env={"VIDEOQUEUE_API_FORMAT": api_format}
    )
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(job_id, settings=p.settings).provider_task_id, timeout_s=30)
    p.sandbox.reset_stats(drop_tasks=True)
    dropped_at = time.monotonic()
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "task_not_found"
    assert time.monotonic() - dropped_at < 10
    assert p.sandbox.stats()["totals"]["responses_by_code"] == {"400": 1}


def test_the_documented_mode_serves_nothing_the_seed_does_not_document():
    with running(routes="documented") as (_sb, client):
        task = create(client, "/v1/video/create", size=None, aspect_ratio="16:9")
        assert client.get(f"/v1/videos/{task['id']}").status_code == 200
        assert client.get(f"/v1/video/query?id={task['id']}").status_code == 404
        assert client.delete(f"/v1/videos/{task['id']}").status_code == 405
        assert client.get(f"/v1/videos/{task['id']}/content").status_code == 404
        missing = client.get("/v1/videos/sora_task_nope")
        assert missing.status_code == 400
        assert missing.json()["code"] == "task_not_exist"
