"""How the poll step reads its answers (worker/tasks.py): what each records, when the job is
asked again, and which answers end it."""

from datetime import UTC, datetime

import httpx
import pytest

from producer.core.names import Lane
from producer.core.records import JobStatus
from tests.unit.fake_runtime import TOKEN, Provider, add_job, fake_runtime
from worker import tasks
from worker.job import Claim

NOW_S = 1_000_000.0


def _submitted_ago(seconds: float) -> str:
    return datetime.fromtimestamp(NOW_S - seconds, UTC).isoformat().replace("+00:00", "Z")


def _status(task_id: str, *answers: httpx.Response) -> Provider:
    provider = Provider()
    provider.on("GET", f"/v1/videos/{task_id}", *answers)
    return provider


def _poll(provider: Provider, *, age_s: float = 30.0, jobs=("job1",), **fields):
    rt = fake_runtime(provider, now_s=NOW_S, deadline_s=600, poll_first_s=2, poll_cap_s=30)
    fields.setdefault("status", JobStatus.SUBMITTED)
    for job_id in jobs:
        add_job(rt, job_id, lane=Lane.POLL, provider_task_id=f"t-{job_id}",
                submitted_at=_submitted_ago(age_s), **fields)  # fmt: skip
    _run(rt, list(jobs))
    return rt


def _run(rt, job_ids: list[str]) -> None:
    tasks.poll.run_claim(Claim(rt, Lane.POLL, TOKEN), job_ids, frozenset())


def _json(body: dict, **kwargs) -> httpx.Response:
    return httpx.Response(200, json=body, **kwargs)


def test_a_running_answer_marks_the_job_processing_and_polls_it_again_later():
    rt = _poll(_status("t-job1", _json({"id": "t-job1", "status": "in_progress", "progress": 40})))
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.PROCESSING
    assert (stored.polls, stored.progress) == (1, 40)
    assert stored.progress_s == pytest.approx(30, abs=0.01)
    placed = rt.store.schedule.last("job1")
    assert placed.lane is Lane.POLL and 0 < placed.delay_s <= 30
    assert "job1" in rt.limits.held


def test_a_done_answer_moves_the_job_to_finalize_at_once_with_its_file_url():
    answer = {"id": "t-job1", "status": "completed", "video_url": "https://cdn.test/v.mp4"}
    rt = _poll(_status("t-job1", _json(answer)), status=JobStatus.PROCESSING)
    assert rt.store.get("job1").status is JobStatus.FINALIZING
    assert rt.store.file_urls["job1"] == "https://cdn.test/v.mp4"
    placed = rt.store.schedule.last("job1")
    assert (placed.lane, placed.delay_s) == (Lane.FINALIZE, 0.0)


def test_a_done_answer_teaches_the_history_only_when_the_polls_bracket_the_end():
    answer = {"id": "t-job1", "status": "completed", "video_url": "https://cdn.test/v.mp4"}
    close = _poll(_status("t-job1", _json(answer)), age_s=100, polled_s=95.0)
    late = _poll(_status("t-job1", _json(answer)), age_s=100, polled_s=20.0)
    assert close.history.recorded == [pytest.approx(97.5, abs=0.01)]
    assert late.history.recorded == []


def test_a_failed_answer_fails_the_job_with_the_providers_reason():
    answer = {"id": "t-job1", "status": "failed", "error": {"code": "moderation", "message": "no"}}
    rt = _poll(_status("t-job1", _json(answer)))
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FAILED and stored.error.code == "moderation"
    assert rt.store.schedule.last("job1").lane is None


def test_an_unknown_status_word_is_counted_and_the_job_keeps_polling():
    rt = _poll(_status("t-job1", _json({"id": "t-job1", "status": "rendering-ish"})))
    assert rt.store.unknown_words == ["rendering-ish"]
    assert rt.store.get("job1").status is JobStatus.SUBMITTED
    assert rt.store.schedule.last("job1").lane is Lane.POLL


def test_a_refused_query_without_a_hint_is_asked_again_soon():
    rt = _poll(_status("t-job1", httpx.Response(503, text="busy")), age_s=300, polled_s=292.0,
               polls=40)  # fmt: skip
    placed = rt.store.schedule.last("job1")
    # A quarter of the 8 s since the last answer, not the 30 s the backoff has reached.
    assert placed.lane is Lane.POLL and placed.delay_s == pytest.approx(2.0, abs=0.01)
    assert rt.store.get("job1").polls == 41


def test_a_job_past_its_deadline_times_out_and_its_task_is_cancelled_upstream():
    provider = _status("t-job1", _json({"id": "t-job1", "status": "in_progress"}))
    provider.on("DELETE", "/v1/videos/t-job1", _json({}))
    rt = _poll(provider, age_s=700)
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FAILED and stored.error.code == "timeout"
    assert len(provider.sent("DELETE", "/v1/videos/t-job1")) == 1


def test_a_video_found_done_past_the_deadline_is_still_kept():
    answer = {"id": "t-job1", "status": "completed", "video_url": "https://cdn.test/v.mp4"}
    rt = _poll(_status("t-job1", _json(answer)), age_s=700)
    assert rt.store.get("job1").status is JobStatus.FINALIZING


def test_the_next_poll_never_sleeps_past_the_deadline():
    rt = _poll(_status("t-job1", _json({"id": "t-job1", "status": "queued"})), age_s=599,
               polls=30)  # fmt: skip
    assert rt.store.schedule.last("job1").delay_s <= 1.05


def test_a_task_the_provider_no_longer_knows_fails_the_job():
    gone = httpx.Response(404, json={"error": {"code": "task_not_exist", "message": "gone"}})
    rt = _poll(_status("t-job1", gone))
    assert rt.store.get("job1").status is JobStatus.FAILED


def test_one_jobs_answer_does_not_hold_back_the_others():
    provider = Provider()
    provider.on("GET", "/v1/videos/t-a", _json({"id": "t-a", "status": "failed"}))
    provider.on("GET", "/v1/videos/t-b", _json({"id": "t-b", "status": "in_progress"}))
    rt = _poll(provider, jobs=("a", "b"))
    assert rt.store.get("a").status is JobStatus.FAILED
    assert rt.store.get("b").status is JobStatus.PROCESSING
    assert rt.store.schedule.last("b").lane is Lane.POLL


def test_a_job_cancelled_while_its_status_was_asked_is_cancelled_upstream_not_updated():
    provider = Provider()
    rt = fake_runtime(provider, now_s=NOW_S)
    add_job(rt, lane=Lane.POLL, status=JobStatus.PROCESSING, provider_task_id="t-job1",
            submitted_at=_submitted_ago(30))  # fmt: skip

    def cancelled_meanwhile(request: httpx.Request) -> httpx.Response:
        rt.store.records["job1"].status = JobStatus.CANCELLED
        return _json({"id": "t-job1", "status": "in_progress"})

    provider.on("GET", "/v1/videos/t-job1", cancelled_meanwhile)
    provider.on("DELETE", "/v1/videos/t-job1", _json({}))
    _run(rt, ["job1"])
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.CANCELLED and stored.polls == 0
    assert len(provider.sent("DELETE", "/v1/videos/t-job1")) == 1
    assert rt.store.schedule.last("job1").lane is None
