"""Every provider oddity ends the job: real workers against a sandbox that misbehaves on
demand. A passing oddity still completes with the provider's bytes; a lasting one fails with
a string code and a readable message. Either way the webhook arrives and the provider slot
is free afterwards."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from producer import JobStatus, enqueue, wait
from producer.core.limits import account_of
from producer.core.records import JobRecord
from producer.core.store import store
from tests.e2e.conftest import API_KEY, BUCKET, Pipeline, eventually

# A cap on provider slots, so that the tests can see every slot given back.
CAPPED = {"VIDEOQUEUE_MAX_IN_FLIGHT": "3"}


def _ended(p: Pipeline, job_id: str, timeout_s: float = 90) -> JobRecord:
    """The job's final record, once its webhook arrived and its slot is free."""
    record = wait(job_id, timeout_s, settings=p.settings)
    delivery = p.receiver.wait_for(
        lambda d: d.verified and json.loads(d.body)["data"]["id"] == job_id, timeout_s=30
    )
    event = json.loads(delivery.body)
    assert event["type"] == f"video.{record.status.value}"
    st = store(p.settings)
    slots = st.keys.in_flight(account_of(API_KEY))
    eventually(lambda: st.redis.zscore(slots, job_id) is None, 10)
    eventually(lambda: st.schedule.entry(job_id) is None, 10)
    return record


def _assert_provider_bytes(p: Pipeline, s3_client, record: JobRecord) -> None:
    """The stored object is the file the sandbox serves for the job's task."""
    assert record.status is JobStatus.COMPLETED, record.error
    data = s3_client.get_object(Bucket=BUCKET, Key=record.output.key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == record.output.sha256
    p.sandbox.configure(broken_moov_rate=0.0, short_content_length_rate=0.0, truncate_rate=0.0)
    served = httpx.get(
        f"{p.settings.api_base_url}/v1/videos/{record.provider_task_id}/content",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert served.status_code == 200 and served.content == data


PASSING = {
    "garbage Retry-After on create": {"retry_after": "soon", "error_rate": 0.5,
                                      "error_routes": ["create"]},
    "huge Retry-After on create": {"retry_after": "99999999999", "error_rate": 0.5,
                                   "error_routes": ["create"]},
    "garbage Retry-After on status": {"retry_after": "Wed, 99 Foo"},
    "huge Retry-After on status": {"retry_after": "99999999999", "error_rate": 0.3,
                                   "error_routes": ["status"]},
    "a 200 HTML page": {"html_rate": 0.4},
    "a body that is not JSON": {"non_json_rate": 0.4},
    "an answer without status": {"missing_status_rate": 0.5},
    "NaN progress": {"nan_progress_rate": 0.7},
    "the file URL as a list": {"url_as_list": True},
    "a broken moov now and then": {"broken_moov_rate": 0.5},
    "a short Content-Length now and then": {"short_content_length_rate": 0.5},
}  # fmt: skip


@pytest.mark.parametrize("knobs", PASSING.values(), ids=PASSING.keys())
def test_a_passing_oddity_still_completes_with_the_providers_bytes(make_pipeline, s3_client, knobs):
    p = make_pipeline(sandbox={"seed": 11, **knobs},
                      env={**CAPPED, "VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "6"})  # fmt: skip
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(2)]
    for job_id in ids:
        _assert_provider_bytes(p, s3_client, _ended(p, job_id))
    assert p.sandbox.stats()["totals"]["creates"] == 2


LASTING = {
    "a numeric error code": ({"fail_rate": 1.0, "numeric_error_code": True}, {}, None),
    "every status answer an HTML page": ({"html_rate": 1.0}, {"VIDEOQUEUE_DEADLINE_S": "4"},
                                         "timeout"),
    "every status answer without status": ({"missing_status_rate": 1.0},
                                           {"VIDEOQUEUE_DEADLINE_S": "4"}, "timeout"),
    "every file with a broken moov": ({"broken_moov_rate": 1.0}, {}, "invalid_video"),
    "every file shorter than its body": ({"short_content_length_rate": 1.0}, {}, None),
}  # fmt: skip


@pytest.mark.parametrize(("knobs", "env", "code"), LASTING.values(), ids=LASTING.keys())
def test_a_lasting_oddity_fails_the_job_with_a_string_code(make_pipeline, knobs, env, code):
    p = make_pipeline(sandbox={"seed": 5, **knobs},
                      env={**CAPPED, "VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "2", **env})  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    record = _ended(p, job_id)
    assert record.status is JobStatus.FAILED
    assert isinstance(record.error.code, str) and record.error.code
    assert record.error.message and API_KEY not in record.error.message
    if code is not None:
        assert record.error.code == code, record.error
    if "numeric_error_code" in knobs:
        assert record.error.code.isdigit()  # the provider's 40001, as a string


def test_an_unexpected_exception_is_retried_then_fails_the_job_as_internal_error(make_pipeline):
    """A record the submit step cannot read (here: a request no longer valid) raises in the
    step every time: after fault_max_attempts the job fails, named, with its webhook."""
    p = make_pipeline(workers=0, env={**CAPPED, "VIDEOQUEUE_FAULT_MAX_ATTEMPTS": "3"})
    job_id = enqueue(p.request(), settings=p.settings)
    st = store(p.settings)
    raw = json.loads(st.redis.get(st.keys.job(job_id)))
    raw["request"]["duration"] = "not a number"
    st.redis.set(st.keys.job(job_id), json.dumps(raw))
    p.start_worker()
    record = _ended(p, job_id)
    assert record.status is JobStatus.FAILED
    assert record.error.code == "internal_error"
    assert "ValidationError" in record.error.message and "submit" in record.error.message
    assert "not a number" not in record.error.message
    assert p.sandbox.stats()["totals"]["creates"] == 0
    log = p.workers[0].log_text()
    assert log.count("unexpected exception") == 3 and f"job_id={job_id!r}" in log
