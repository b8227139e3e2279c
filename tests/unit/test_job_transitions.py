"""A job's moves (worker/job.py): which statuses may go where, and what each move sets."""

from datetime import UTC, datetime

import pytest

from producer.core.names import Lane
from producer.core.records import (
    AttemptOutcome,
    JobRecord,
    JobStatus,
    Output,
    ProviderAttempt,
    WebhookDelivery,
    WebhookState,
    schedule_fields,
)
from tests.unit.fake_runtime import Provider, add_job, fake_runtime
from worker.answers import ProviderTask
from worker.dialect import TaskState
from worker.job import route


@pytest.fixture
def rt():
    return fake_runtime(Provider())


def _attempt(provider: str, outcome: AttemptOutcome) -> ProviderAttempt:
    return ProviderAttempt(provider=provider, outcome=outcome)


@pytest.mark.parametrize(
    ("fields", "lane"),
    [
        ({"status": JobStatus.QUEUED}, Lane.SUBMIT),
        ({"status": JobStatus.QUEUED, "batch_id": "b1"}, Lane.SUBMIT),
        ({"status": JobStatus.SUBMITTED}, Lane.POLL),
        ({"status": JobStatus.PROCESSING}, Lane.POLL),
        ({"status": JobStatus.FINALIZING}, Lane.FINALIZE),
        (
            {
                "status": JobStatus.FAILED,
                "webhook": WebhookDelivery(url="http://x", event_type="e"),
            },
            Lane.NOTIFY,
        ),  # fmt: skip
        ({"status": JobStatus.COMPLETED}, None),
        (
            {
                "status": JobStatus.CANCELLED,
                "webhook": WebhookDelivery(url="http://x", event_type="e", state=WebhookState.DEAD),
            },
            None,
        ),  # fmt: skip
    ],
)
def test_each_status_calls_for_its_lane(fields, lane):
    assert route(JobRecord(id="j", request={}, **fields)) is lane


def test_pin_counts_an_attempt_and_marks_the_create_sent(rt):
    job = add_job(rt)
    routes = []
    pin = job.pin("default", resends_safely=True, after=lambda r, pipe: routes.append(r.id))
    stored = rt.store.get("job1")
    assert (pin.sends, pin.resending) == (True, False)
    assert stored.attempts == 1 and stored.provider == "default"
    assert [a.outcome for a in stored.provider_attempts] == [AttemptOutcome.SENT]
    assert routes == ["job1"]  # its after ran with the write


def test_pin_turns_a_create_never_answered_into_an_uncertain_one_and_resends_it(rt):
    job = add_job(rt, provider_attempts=[_attempt("default", AttemptOutcome.SENT)], attempts=1)
    pin = job.pin("default", resends_safely=True, after=lambda r, pipe: None)
    attempts = rt.store.get("job1").provider_attempts
    assert (pin.sends, pin.resending) == (True, True)
    assert (attempts[0].outcome, attempts[0].code) == (AttemptOutcome.UNCERTAIN, "unanswered")
    assert attempts[1].outcome is AttemptOutcome.SENT


def test_pin_does_not_send_again_where_the_dialect_cannot_resend_safely(rt):
    job = add_job(rt, provider_attempts=[_attempt("default", AttemptOutcome.UNCERTAIN)])
    pin = job.pin("default", resends_safely=False, after=lambda r, pipe: None)
    stored = rt.store.get("job1")
    assert (pin.sends, pin.resending) == (False, True)
    assert [a.outcome for a in stored.provider_attempts] == [AttemptOutcome.UNCERTAIN]
    assert stored.attempts == 1


def test_pin_leaves_an_ended_job_alone(rt):
    job = add_job(rt, status=JobStatus.CANCELLED)
    ran = []
    pin = job.pin("default", resends_safely=True, after=lambda r, pipe: ran.append(r))
    assert not pin.sends and ran == []
    assert rt.store.get("job1").attempts == 0


def test_a_refused_create_frees_the_job_for_another_provider(rt):
    job = add_job(rt, provider="a", provider_attempts=[_attempt("a", AttemptOutcome.SENT)])
    record = job.attempted("a", AttemptOutcome.REFUSED, "rate_limited")
    assert record.provider is None
    assert len(record.provider_attempts) == 1  # the sent entry settled, not a new one
    assert (record.provider_attempts[0].outcome, record.provider_attempts[0].code) == (
        AttemptOutcome.REFUSED,
        "rate_limited",
    )


def test_a_refused_create_keeps_the_job_where_an_earlier_create_may_have_made_a_task(rt):
    earlier = [_attempt("a", AttemptOutcome.UNCERTAIN), _attempt("a", AttemptOutcome.SENT)]
    job = add_job(rt, provider="a", provider_attempts=earlier)
    assert job.attempted("a", AttemptOutcome.REFUSED, "rate_limited").provider == "a"


def test_submitted_moves_a_queued_job_on_and_records_its_task(rt):
    job = add_job(rt, provider_attempts=[_attempt("default", AttemptOutcome.SENT)])
    task = ProviderTask(id="task-9", state=TaskState.WAITING, raw_status="queued")
    record = job.submitted(task, "default")
    assert record.status is JobStatus.SUBMITTED
    assert (record.provider_task_id, record.provider_status) == ("task-9", "queued")
    assert record.submitted_at is not None
    assert record.provider_attempts[-1].outcome is AttemptOutcome.CREATED


def test_submitted_keeps_a_job_cancelled_meanwhile_cancelled_with_its_task_id(rt):
    job = add_job(rt, status=JobStatus.CANCELLED)
    record = job.submitted(ProviderTask(id="task-9", state=TaskState.WAITING), "default")
    assert record.status is JobStatus.CANCELLED and record.provider_task_id == "task-9"


def test_unsent_cancels_a_pinned_job_and_settles_its_create_as_refused(rt):
    job = add_job(rt, provider_attempts=[_attempt("default", AttemptOutcome.SENT)])
    record = job.unsent("default")
    assert record.status is JobStatus.CANCELLED and record.finished_at
    assert (record.provider_attempts[0].outcome, record.provider_attempts[0].code) == (
        AttemptOutcome.REFUSED,
        "cancelled",
    )


def test_fail_ends_the_job_gives_its_slot_back_and_schedules_its_webhook(rt):
    job = add_job(
        rt, lane=Lane.POLL, status=JobStatus.PROCESSING,
        request={"model": "m", "prompt": "p", "webhook_url": "http://hook.test/x"},
    )  # fmt: skip
    rt.limits.held.add("job1")
    job.fail("generation_failed", "bad luck at https://cdn.test/v.mp4?X-Amz-Signature=abc123")
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FAILED and stored.finished_at
    assert stored.error.code == "generation_failed"
    assert "abc123" not in stored.error.message  # redacted before it is stored
    assert stored.webhook.event_type == "video.failed"
    assert rt.store.schedule.last("job1").lane is Lane.NOTIFY
    assert "job1" not in rt.limits.held and "job1" not in rt.limits.routes
    assert "job1" in job.claim.placed


def test_fail_on_a_job_that_ended_meanwhile_changes_nothing_and_routes_it(rt):
    job = add_job(rt, status=JobStatus.CANCELLED)
    job.fail("timeout", "late")
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.CANCELLED and stored.error is None
    assert rt.store.schedule.last("job1").lane is None  # nothing left to do: out of the schedule


def test_complete_records_the_output_and_adds_the_usage_to_its_batch(rt):
    job = add_job(rt, lane=Lane.FINALIZE, status=JobStatus.FINALIZING, batch_id="b1",
                  usage={"cost": 0.5})  # fmt: skip
    job.complete(Output(bucket="b", key="videos/job1.mp4", size_bytes=10, sha256="00"))
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.COMPLETED and stored.progress == 100
    assert stored.output.key == "videos/job1.mp4"
    assert rt.store.batch_usage == {"b1": {"cost": 0.5}}


def test_revisit_keeps_the_slot_of_a_job_the_provider_is_generating(rt):
    job = add_job(rt, lane=Lane.POLL, status=JobStatus.PROCESSING)
    job.revisit(12.0)
    placed = rt.store.schedule.last("job1")
    assert (placed.lane, placed.delay_s) == (Lane.POLL, 12.0)
    assert "job1" in rt.limits.held


def test_a_placement_by_a_claim_that_lost_its_lease_is_dropped(rt):
    job = add_job(rt)
    rt.store.schedule.leases["job1"] = "a-newer-claim"
    job.revisit()
    assert rt.store.schedule.placements == []


def test_count_copy_takes_back_a_round_an_outage_spent(rt):
    job = add_job(rt, status=JobStatus.FINALIZING, copy_attempts=2)
    assert job.count_copy().copy_attempts == 3
    assert job.count_copy(-1).copy_attempts == 2


def test_a_new_records_priority_defaults_by_its_kind_and_its_deadline_counts_from_now():
    now = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
    assert schedule_fields(None, None, in_batch=False, now=now) == {"priority": 0}
    assert schedule_fields(None, None, in_batch=True, now=now) == {"priority": -1}
    fields = schedule_fields(7, 90.5, in_batch=True, now=now)
    assert fields == {"priority": 7, "deadline_s": 90.5, "deadline_at": "2026-12-06T01:01:30.500Z",
                      "deadline_unix_s": now.timestamp() + 90.5}  # fmt: skip
    record = JobRecord(id="j", request={}, **fields)
    assert not record.past_deadline(now.timestamp() + 90.4)
    assert record.past_deadline(now.timestamp() + 90.5)
    assert not JobRecord(id="j", request={}).past_deadline(now.timestamp() + 10**9)
