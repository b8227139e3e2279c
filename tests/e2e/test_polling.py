"""Polling through real workers: the last poll before the deadline, status answers that drip,
and faults spread over a long job's life."""

from __future__ import annotations

import time

import pytest

from producer import JobStatus, enqueue, get, wait
from producer.characters import create_character
from producer.core.errors import ProviderError, RetryableError
from producer.core.requests import VideoRequest
from producer.core.settings import ApiFormat
from producer.core.store import store
from tests.e2e.conftest import eventually
from worker.provider import client_for


def test_a_video_done_in_the_last_interval_before_the_deadline_completes(make_pipeline):
    # Polls at most every 5 s (at least 4.25 s apart, jitter included): the first lands at
    # 4.25..5 s, while the 6.5 s generation runs; the next waits for the deadline (8 s), past
    # which only asking the provider can tell that the video was done at 6.5 s.
    p = make_pipeline(
        sandbox={"fast": False, "jitter": 0,
                 "timings": {"sora": {"base_s": 6.5, "per_video_second_s": 0}}},
        env={"VIDEOQUEUE_POLL_FIRST_S": "5", "VIDEOQUEUE_POLL_CAP_S": "5",
             "VIDEOQUEUE_DEADLINE_S": "8"},
    )  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error


# Seed 246's first draw of the drip stream is under 0.05 and its next 39 are not: exactly the
# first status answer drips, whichever job it is for.
@pytest.mark.parametrize("head", [False, True], ids=["error-body", "head"])
def test_a_dripping_status_answer_is_cut_at_the_api_timeout_and_the_other_jobs_complete(
    make_pipeline, head
):
    # Dripped whole, the answer would take over a minute; API_TIMEOUT_S is 3 s. One worker
    # process, so that a held poll holds every job.
    p = make_pipeline(
        sandbox={"seed": 246, "drip_error_rate": 0.05, "drip_routes": ["status"],
                 "drip_head": head},
        concurrency=1,
    )  # fmt: skip
    began = time.monotonic()
    job_ids = [enqueue(p.request(), settings=p.settings) for _ in range(4)]
    records = [wait(job_id, 40, settings=p.settings) for job_id in job_ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    assert time.monotonic() - began < 20
    assert p.sandbox.stats(include_tasks=False)["totals"]["faults"] == {"drip_error": 1}


@pytest.mark.parametrize("call", ["create", "cancel", "characters"])
def test_every_provider_call_dripping_its_answers_head_ends_at_the_api_timeout(make_pipeline, call):
    route = {"create": "create", "cancel": "status", "characters": "characters"}[call]
    p = make_pipeline(
        workers=0,
        sandbox={"drip_error_rate": 1.0, "drip_routes": [route], "drip_head": True},
        env={"VIDEOQUEUE_API_TIMEOUT_S": "1.5"},
    )
    client = client_for(p.settings)
    began = time.monotonic()
    if call == "create":
        request = VideoRequest.model_validate(p.request())
        with pytest.raises(RetryableError, match="over 1.5 s in all"):
            client.create(request, ApiFormat.OPENAI, idempotency_key="order-1")
    elif call == "cancel":
        assert client.cancel("sora_task_1") is False
    else:
        with pytest.raises(ProviderError, match="ReadTimeout"):
            create_character({"name": "Ada"}, settings=p.settings)
    assert time.monotonic() - began < 3
    assert p.sandbox.stats(include_tasks=False)["totals"]["faults"] == {"drip_error": 1}


def test_faults_spread_over_a_jobs_life_do_not_end_it(make_pipeline):
    """More faults than FAULT_MAX_ATTEMPTS in all, never that many in a row: the job lives."""
    # The novel vocabulary's words are unknown, so every poll counts one in Redis; while that
    # counter's key holds a string, the write fails (WRONGTYPE) and the poll faults.
    p = make_pipeline(
        sandbox={"fast": False, "vocabulary": "novel",
                 "timings": {"sora": {"base_s": 12, "per_video_second_s": 0}}},
        env={"VIDEOQUEUE_FAULT_MAX_ATTEMPTS": "2"},
    )  # fmt: skip
    st = store(p.settings)
    counter, faults = st.keys.unknown_statuses(), st.keys.faults()
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(job_id, settings=p.settings).polls >= 1, 20)
    for _ in range(3):
        before = int(st.redis.hget(faults, job_id) or 0)
        st.redis.delete(counter)
        st.redis.set(counter, "not a hash")
        eventually(
            lambda b=before: (
                int(st.redis.hget(faults, job_id) or 0) > b
                or get(job_id, settings=p.settings).terminal
            ),
            10,
        )
        st.redis.delete(counter)
        polls = get(job_id, settings=p.settings).polls
        eventually(
            lambda n=polls: (r := get(job_id, settings=p.settings)).polls > n or r.terminal, 10
        )
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
