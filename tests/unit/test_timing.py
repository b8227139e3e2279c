"""The backoff and poll timing rules."""

import math
import random

import pytest

from worker.timing import (
    LATE_SHARE,
    PollTiming,
    bounded_hint_s,
    estimate_from_progress,
    next_poll_s,
    retry_delay_s,
    usual_generation_s,
)

TIMING = PollTiming(first_s=2, factor=1.5, cap_s=30)


def test_retry_delay_uses_full_jitter_below_the_exponential_ceiling():
    rng = random.Random(7)
    for attempt in range(10):
        ceiling = min(60.0, 2.0 * 2**attempt)
        delays = [retry_delay_s(attempt, 2.0, 60.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        # full jitter: spread over the whole range, not bunched at the ceiling
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_without_evidence_the_poll_delay_grows_geometrically_to_the_cap():
    rng = random.Random(1)
    medians = []
    for polls in range(12):
        ds = sorted(next_poll_s(TIMING, polls=polls, elapsed_s=0, rng=rng) for _ in range(101))
        medians.append(ds[50])
        assert all(d <= 30 for d in ds)
    assert medians[0] == pytest.approx(2, rel=0.1)
    assert medians[1] == pytest.approx(3, rel=0.1)
    assert medians[-1] == pytest.approx(30, rel=0.15)


def test_poll_delay_jitter_keeps_jobs_out_of_lockstep():
    rng = random.Random(3)
    ds = {round(next_poll_s(TIMING, polls=3, elapsed_s=5, rng=rng), 3) for _ in range(50)}
    assert len(ds) > 40
    assert min(ds) >= 2 * 1.5**3 * 0.85 and max(ds) <= 2 * 1.5**3 * 1.15


def test_the_providers_poll_hint_is_a_floor_but_never_past_the_cap():
    assert next_poll_s(TIMING, polls=0, elapsed_s=0, hint_s=12) >= 12
    assert next_poll_s(TIMING, polls=0, elapsed_s=0, hint_s=bounded_hint_s(1e11, 30)) == 30


@pytest.mark.parametrize("hint", [None, -5.0, math.nan, math.inf, -math.inf])
def test_a_garbage_hint_is_ignored(hint):
    assert bounded_hint_s(hint, 30) is None


def test_a_huge_hint_is_cut_to_the_cap():
    assert bounded_hint_s(99999999999.0, 120) == 120
    assert bounded_hint_s(3.5, 120) == 3.5


def test_two_progress_reports_give_the_finish_time_by_their_rate():
    # 20 % at 30 s, 50 % at 60 s: 1 % a second, so 100 % at 110 s (a 10 s queue before).
    assert estimate_from_progress(50, 60, last_progress=20, last_elapsed_s=30) == 110


def test_one_progress_report_goes_only_part_of_the_way_it_implies():
    # 25 % at 20 s implies 80 s; the queue before the first report may make that long.
    estimate = estimate_from_progress(25, 20, last_progress=None, last_elapsed_s=None)
    assert 20 < estimate < 80


@pytest.mark.parametrize("progress", [None, 0, 100])
def test_progress_without_information_gives_no_estimate(progress):
    assert estimate_from_progress(progress, 10, last_progress=None, last_elapsed_s=None) is None


def test_the_poll_aims_at_the_expected_end():
    assert next_poll_s(TIMING, polls=1, elapsed_s=40, estimate_s=55) == pytest.approx(15)


def test_past_its_expected_end_a_job_is_polled_every_small_share_of_its_age():
    for elapsed in (60.0, 120.0, 300.0):
        d = next_poll_s(TIMING, polls=8, elapsed_s=elapsed, estimate_s=50)
        assert d <= max(2, LATE_SHARE * elapsed)
        assert d >= min(30, 0.85 * max(2, LATE_SHARE * elapsed))


def test_a_models_usual_time_sets_the_first_poll():
    durations = [10.0 + i * 0.1 for i in range(40)]
    usual = usual_generation_s(durations)
    assert usual is not None and 10 <= usual <= 10.5
    assert next_poll_s(TIMING, polls=0, elapsed_s=0, usual_s=usual) == pytest.approx(usual)


def test_too_little_history_gives_no_usual_time():
    assert usual_generation_s([12.0, 13.0]) is None
    assert usual_generation_s([math.nan, -1.0, math.inf, 0.0, 5.0]) is None


def test_a_generation_time_is_learned_only_from_polls_that_bracket_its_end_closely():
    from worker.tasks import _generation_s

    assert _generation_s(48.0, 52.0, 2.0) == 50.0
    assert _generation_s(None, 30.0, 2.0) is None  # first seen done: it may have been long done
    assert _generation_s(10.0, 40.0, 2.0) is None  # running at 10 s, done at 40 s: no telling


def test_a_short_generation_is_learned_from_a_bracket_of_two_first_polls():
    """A 12 s model's cold polls (7.3 s, then 10.5 s) never come within 25 % of its age."""
    from worker.tasks import _generation_s

    assert _generation_s(7.3, 10.5, 2.0) == (7.3 + 10.5) / 2
    assert _generation_s(7.3, 12.0, 2.0) is None  # 4.7 s apart: wider than both bounds


def test_a_zero_percent_report_is_not_the_start_of_the_progress_line():
    # 0 % while queued at 10 s, then 20 % at 20 s: the rate is not 2 %/s from the queue.
    from_queue = estimate_from_progress(20, 20, last_progress=0, last_elapsed_s=10)
    assert from_queue == estimate_from_progress(20, 20, last_progress=None, last_elapsed_s=None)
    assert from_queue is not None and from_queue <= 20 + 20 * 0.5
