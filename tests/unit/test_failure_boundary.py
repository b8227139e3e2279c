"""The failure boundary every step shares (worker/steps.py): what it does with an exception
nobody anticipated, with a claim found unfinished, and with entries that are not its to run."""

import httpx
import pytest

from producer.core.names import Lane
from producer.core.records import JobStatus, WebhookDelivery, WebhookState
from tests.unit.fake_runtime import TOKEN, Provider, add_job, fake_runtime
from worker import tasks
from worker.job import Claim
from worker.steps import Step


class Boom(Step):  # type: ignore[misc]
    """A step that raises, with a message that must never reach the record."""

    name = "videoqueue.boom"
    lanes = frozenset({Lane.SUBMIT})

    def run(self, job):
        raise KeyError("https://cdn.test/v.mp4?sig=secret")


class BatchBoom(Boom):
    batched = True
    lanes = frozenset({Lane.POLL})

    def run(self, jobs):
        jobs[0].revisit(5.0)  # the first job is moved on before the exception
        raise RuntimeError("the batch's write failed")


@pytest.fixture
def rt():
    return fake_runtime(Provider(), fault_max_attempts=3, retry_base_s=1, retry_cap_s=10)


def _claim(rt, lane=Lane.SUBMIT):
    return Claim(rt, lane, TOKEN)


def test_an_unexpected_exception_brings_the_job_back_in_its_lane_after_a_backoff(rt):
    add_job(rt)
    Boom().run_claim(_claim(rt), ["job1"], frozenset())
    placed = rt.store.schedule.last("job1")
    assert placed.lane is Lane.SUBMIT and placed.keep_faults and 0.1 <= placed.delay_s <= 2
    assert rt.store.schedule.faults["job1"] == 1
    assert rt.store.get("job1").status is JobStatus.QUEUED


def test_too_many_faults_in_a_row_fail_the_job_naming_the_exception_type_not_its_message(rt):
    add_job(rt)
    rt.store.schedule.faults["job1"] = 2  # the third in a row is the last allowed
    Boom().run_claim(_claim(rt), ["job1"], frozenset())
    error = rt.store.get("job1").error
    assert error.code == "internal_error"
    assert "KeyError" in error.message and "boom step (3 times)" in error.message
    assert "secret" not in error.message and "cdn.test" not in error.message


def test_a_webhook_step_that_keeps_failing_dead_letters_the_delivery(rt):
    hook = WebhookDelivery(url="http://hook.test", event_type="video.completed")
    add_job(rt, lane=Lane.NOTIFY, status=JobStatus.COMPLETED, webhook=hook)
    rt.store.schedule.faults["job1"] = 2
    boom = type("NotifyBoom", (Boom,), {"lanes": frozenset({Lane.NOTIFY})})()
    boom.run_claim(_claim(rt, Lane.NOTIFY), ["job1"], frozenset())
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.COMPLETED  # an ended job stays as it ended
    assert stored.webhook.state is WebhookState.DEAD
    assert stored.webhook.last_error.startswith("internal_error")
    assert list(rt.store.dead_letters.values()) == ["job1"]
    assert rt.store.schedule.last("job1").lane is None


def test_a_recovered_claim_counts_a_recovery_and_runs_the_step_again(rt):
    add_job(rt)
    ran = []
    step = type("Recorder", (Boom,), {"run": lambda self, job: ran.append(job.id)})()
    step.run_claim(_claim(rt), ["job1"], frozenset({"job1"}))
    assert ran == ["job1"] and rt.store.get("job1").recoveries == 1


def test_a_job_whose_steps_keep_getting_lost_fails(rt):
    add_job(rt, recoveries=3)
    Boom().run_claim(_claim(rt), ["job1"], frozenset({"job1"}))
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FAILED and stored.error.code == "internal_error"
    assert "lost 4 times" in stored.error.message


def test_a_job_met_in_a_lane_it_no_longer_belongs_to_is_sent_to_its_own(rt):
    add_job(rt, status=JobStatus.FINALIZING)
    Boom().run_claim(_claim(rt), ["job1"], frozenset())  # not run: it would raise
    assert rt.store.schedule.last("job1").lane is Lane.FINALIZE
    assert "job1" not in rt.store.schedule.faults


def test_an_entry_whose_record_is_gone_leaves_the_schedule(rt):
    rt.store.schedule.leases["ghost"] = TOKEN
    Boom().run_claim(_claim(rt), ["ghost"], frozenset())
    assert rt.store.schedule.last("ghost").lane is None


def test_a_cancelled_job_met_in_the_poll_lane_is_cancelled_at_the_provider():
    provider = Provider()
    provider.on("DELETE", "/v1/videos/task-1", httpx.Response(200, json={}))
    rt = fake_runtime(provider)
    add_job(rt, lane=Lane.POLL, status=JobStatus.CANCELLED, provider_task_id="task-1")
    tasks.poll.run_claim(_claim(rt, Lane.POLL), ["job1"], frozenset())
    assert len(provider.sent("DELETE", "/v1/videos/task-1")) == 1
    assert rt.store.schedule.last("job1").lane is None


def test_a_batched_steps_exception_faults_only_the_jobs_it_had_not_moved_on(rt):
    add_job(rt, "a", lane=Lane.POLL, status=JobStatus.PROCESSING)
    add_job(rt, "b", lane=Lane.POLL, status=JobStatus.PROCESSING)
    BatchBoom().run_claim(_claim(rt, Lane.POLL), ["a", "b"], frozenset())
    assert "a" not in rt.store.schedule.faults
    moved_on = rt.store.schedule.last("a")
    assert moved_on.delay_s == 5.0 and not moved_on.keep_faults
    assert rt.store.schedule.faults["b"] == 1 and rt.store.schedule.last("b").keep_faults


def test_each_confines_an_exception_to_its_own_job(rt):
    jobs = [add_job(rt, "a"), add_job(rt, "b")]

    def work(job):
        if job.id == "a":
            raise ValueError("only a")
        return job.id.upper()

    assert Boom().each(jobs, work) == {"b": "B"}
    assert rt.store.schedule.faults == {"a": 1}
