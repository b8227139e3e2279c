"""Creates that may have taken effect, and creates that must not be sent at all, through real
workers and a sandbox that makes a task and then loses its answer: a dialect with no
idempotency key never sends such a create again (the job ends `uncertain_create`, naming the
provider), Kling finds its task by the external_task_id it sent, and a job cancelled just
before its create sends nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from producer import JobStatus, cancel, enqueue, enqueue_batch, get, wait
from producer.core.records import AttemptOutcome
from producer.core.store import store
from tests.e2e.conftest import eventually

# The worker gives up on an answer after half a second; a hung create holds its answer longer.
SHORT_TIMEOUT = {"VIDEOQUEUE_API_TIMEOUT_S": "0.5"}
KLING_KEY = "ak-test-0123456789:sk-test-abcdefghijklmnop"


def _request(p) -> dict:
    """A request Luma and Kling can take (they speak aspect ratios, not sizes)."""
    request = p.request(webhook_url=None, aspect_ratio="16:9")
    del request["size"], request["webhook_url"]
    return request


def _tasks(p) -> int:
    return p.sandbox.stats()["totals"]["tasks"]


@pytest.mark.parametrize("fault", ["lost", "hang"])
def test_a_create_that_may_have_taken_effect_is_not_sent_again_without_a_key(make_pipeline, fault):
    """Luma has no idempotency key and no lookup: a create whose answer was lost (502) or
    never came (read timeout) made a task, and sending it again would make a second."""
    p = make_pipeline(sandbox={"dialect": "luma", "fault_sequence": {"create": [fault]}},
                      env={"VIDEOQUEUE_API_DIALECT": "luma", **SHORT_TIMEOUT})  # fmt: skip
    job_id = enqueue(_request(p), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "uncertain_create"
    assert "'default'" in record.error.message and job_id in record.error.message
    assert _tasks(p) == 1 and p.sandbox.stats()["totals"]["creates"] == 1
    assert [a.outcome for a in record.provider_attempts] == [AttemptOutcome.UNCERTAIN]


def test_a_create_whose_worker_died_before_its_answer_is_not_sent_again_without_a_key(
    make_pipeline,
):
    """The worker is killed while its create hangs (the task is made): the submit that
    recovers the job finds a create sent and never answered, and sends nothing."""
    env = {"VIDEOQUEUE_API_DIALECT": "luma", "VIDEOQUEUE_LEASE_S": "4"}
    p = make_pipeline(sandbox={"dialect": "luma", "fault_sequence": {"create": ["hang"]}}, env=env)
    job_id = enqueue(_request(p), settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["creates"] == 1, 30, every_s=0.02)
    p.workers[-1].kill()
    p.start_worker()
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "uncertain_create"
    assert record.recoveries >= 1
    assert _tasks(p) == 1 and p.sandbox.stats()["totals"]["creates"] == 1
    assert [(a.outcome, a.code) for a in record.provider_attempts] == [
        (AttemptOutcome.UNCERTAIN, "unanswered")
    ]


def test_kling_finds_the_task_of_a_create_whose_answer_was_lost(make_pipeline):
    p = make_pipeline(
        sandbox={"dialect": "kling", "api_key": KLING_KEY,
                 "fault_sequence": {"create": ["lost"]}},
        env={"VIDEOQUEUE_API_DIALECT": "kling", "VIDEOQUEUE_API_KEY": KLING_KEY},
    )  # fmt: skip
    job_id = enqueue(_request(p), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert _tasks(p) == 1 and p.sandbox.stats()["totals"]["creates"] == 1
    assert list(p.sandbox.stats()["tasks"]) == [record.provider_task_id]


def test_kling_refusing_a_repeated_external_task_id_does_not_end_the_job(make_pipeline):
    """The lost create's task is not found at first (the lookup answers 404), so the create is
    sent again with the same external_task_id; Kling refuses the repeat, and the job adopts
    the task the id names instead of failing."""
    p = make_pipeline(
        sandbox={"dialect": "kling", "api_key": KLING_KEY,
                 "fault_sequence": {"create": ["lost"], "status": ["404"]}},
        env={"VIDEOQUEUE_API_DIALECT": "kling", "VIDEOQUEUE_API_KEY": KLING_KEY},
    )  # fmt: skip
    job_id = enqueue(_request(p), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    stats = p.sandbox.stats()
    assert stats["totals"]["tasks"] == 1 and list(stats["tasks"]) == [record.provider_task_id]
    assert stats["totals"]["responses_by_code"].get("400") == 1  # the refused repeat


def test_a_job_cancelled_just_before_its_create_sends_nothing(make_pipeline, tmp_path):
    """The worker is held between loading the job and sending its create; the job is
    cancelled there."""
    hold = tmp_path / "hold"
    hold.mkdir()
    p = make_pipeline(workers=0, env={"VQTEST_HOLD_DIR": str(hold)})
    p.start_worker(app="tests.e2e.held_worker")
    job_id = enqueue(p.request(webhook_url=None), settings=p.settings)
    held = Path(hold / f"{job_id}.held")
    eventually(held.exists, 30, every_s=0.02)
    assert cancel(job_id, settings=p.settings).status is JobStatus.CANCELLED
    (hold / f"{job_id}.go").touch()
    eventually(lambda: store(p.settings).schedule.total() == 0, 15)
    time.sleep(0.5)  # a create sent late would land by now
    assert p.sandbox.stats()["totals"]["creates"] == 0
    record = get(job_id, settings=p.settings)
    assert record.status is JobStatus.CANCELLED and record.attempts == 0


def test_a_job_whose_batch_is_cancelled_just_before_its_create_sends_nothing(
    make_pipeline, tmp_path
):
    """The worker is held between loading the job and sending its create; its batch's cancel
    has set the batch's flag there but not yet reached the job's own record (cancel_batch sets
    the flag first, then marks each job)."""
    hold = tmp_path / "hold"
    hold.mkdir()
    p = make_pipeline(workers=0, env={"VQTEST_HOLD_DIR": str(hold)})
    p.start_worker(app="tests.e2e.held_worker")
    batch_id = enqueue_batch([p.request(webhook_url=None)], settings=p.settings)
    st = store(p.settings)
    (job_id,) = st.batch_job_ids(batch_id)
    eventually((hold / f"{job_id}.held").exists, 30, every_s=0.02)
    st.set_batch_fields(batch_id, {"cancelled": "1"})
    (hold / f"{job_id}.go").touch()
    eventually(lambda: st.schedule.total() == 0, 15)
    time.sleep(0.5)  # a create sent late would land by now
    assert p.sandbox.stats()["totals"]["creates"] == 0
    assert get(job_id, settings=p.settings).status is JobStatus.CANCELLED
