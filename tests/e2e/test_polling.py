"""Polling through real workers: the last poll before the deadline, status answers that drip,
and faults spread over a long job's life."""

from __future__ import annotations

from producer import JobStatus, enqueue, get, wait
from producer.jobs import store
from tests.e2e.conftest import eventually


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
    assert record.polls == 2


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
