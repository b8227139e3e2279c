"""Polling as the reconciler of jobs whose provider calls back (worker/timing.py
reconcile_poll_s, worker/history.py CallbackLoss)."""

import random

from worker.history import CallbackLoss
from worker.timing import RECONCILE_SHARE, PollTiming, next_poll_s, reconcile_poll_s

TIMING = PollTiming(first_s=2.0, factor=1.2, cap_s=30.0)


def test_the_first_poll_comes_just_after_nearly_every_job_of_the_shape_ended():
    """A 90 s shape is not polled until ~101 s (beyond the 30 s cap: the callback is what
    notices it on time), where polling alone would ask at 2 s and on."""
    delay_s = reconcile_poll_s(TIMING, elapsed_s=0.0, late_s=90.0, rng=random.Random(1))
    assert delay_s == 90.0 * 1.1 + 2.0
    assert next_poll_s(TIMING, polls=0, elapsed_s=0.0, rng=random.Random(1)) < 3


def test_past_its_expected_end_a_job_is_polled_every_quarter_of_its_age_at_most_the_cap():
    for elapsed_s in (110.0, 400.0):
        delay_s = reconcile_poll_s(TIMING, elapsed_s=elapsed_s, late_s=90.0, rng=random.Random(2))
        assert 0.85 * min(30.0, RECONCILE_SHARE * elapsed_s) <= delay_s <= 30.0


def test_without_history_the_reconciler_waits_about_the_cap():
    delay_s = reconcile_poll_s(TIMING, elapsed_s=0.0, late_s=None, rng=random.Random(3))
    assert 0.85 * 30.0 <= delay_s <= 30.0


def test_a_provider_whose_callbacks_go_missing_is_polled_as_before_and_back_when_they_come():
    loss = CallbackLoss()
    assert not loss.too_high("p")
    for _ in range(10):  # 3 in 10 lost
        for called_back in (True, True, False, True, True, False, True, True, True, False):
            loss.saw("p", called_back)
    assert loss.too_high("p") and not loss.too_high("other")
    for _ in range(15):  # a run of delivered ones among them does not swing it back
        loss.saw("p", True)
    assert loss.too_high("p")
    for _ in range(60):
        loss.saw("p", True)
    assert not loss.too_high("p")
    stopped = CallbackLoss()  # after 100 good ones, callbacks stop: noticed within 8 jobs
    for _ in range(100):
        stopped.saw("p", True)
    for _ in range(8):
        stopped.saw("p", False)
    assert stopped.too_high("p")
    fresh = CallbackLoss()  # a worker that starts among 30 % lost knows it within 10 jobs
    for called_back in (True, False, True, True, False, True, True, False, True, True):
        fresh.saw("p", called_back)
    assert fresh.too_high("p")


def test_the_reconciler_s_own_early_finds_do_not_switch_a_healthy_provider_to_polling():
    """About 1 job in 20 ends after the reconciler's first poll and is found without its
    callback having come: that is no sign of lost callbacks."""
    loss = CallbackLoss()
    rng = random.Random(4)
    polled = 0
    for _ in range(2000):
        loss.saw("p", rng.random() > 0.05)
        polled += loss.too_high("p")
    assert polled < 0.05 * 2000
