"""Polling through real workers: the last poll before the deadline, status answers that drip,
and faults spread over a long job's life."""

from __future__ import annotations

from producer import JobStatus, enqueue, wait


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
