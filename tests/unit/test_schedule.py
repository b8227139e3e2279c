"""The backoff and poll timing rules."""

import random

import pytest

from worker.schedule import poll_delay_s, retry_delay_s


def test_retry_delay_uses_full_jitter_below_the_exponential_ceiling():
    rng = random.Random(7)
    for attempt in range(10):
        ceiling = min(60.0, 2.0 * 2**attempt)
        delays = [retry_delay_s(attempt, 2.0, 60.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        # full jitter: spread over the whole range, not bunched at the ceiling
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_poll_delay_grows_geometrically_to_the_cap():
    rng = random.Random(1)
    medians = []
    for polls in range(12):
        ds = sorted(
            poll_delay_s(polls, first_s=2, factor=1.5, cap_s=30, rng=rng) for _ in range(101)
        )
        medians.append(ds[50])
        assert all(d <= 30 for d in ds)
    assert medians[0] == pytest.approx(2, rel=0.1)
    assert medians[1] == pytest.approx(3, rel=0.1)
    assert medians[-1] == pytest.approx(30, rel=0.15)
    assert medians == sorted(medians) or all(m > 25 for m in medians[8:])


def test_poll_delay_jitter_keeps_jobs_out_of_lockstep():
    rng = random.Random(3)
    ds = {round(poll_delay_s(3, first_s=2, factor=1.5, cap_s=30, rng=rng), 3) for _ in range(50)}
    assert len(ds) > 40
    assert min(ds) >= 2 * 1.5**3 * 0.8 and max(ds) <= 2 * 1.5**3 * 1.2


def test_poll_delay_honours_the_providers_poll_after_hint_as_a_floor():
    rng = random.Random(5)
    assert poll_delay_s(0, first_s=1, factor=2, cap_s=30, hint_s=12, rng=rng) >= 12


def test_progress_shortens_the_wait_for_a_nearly_finished_job():
    rng = random.Random(9)
    # 90 % after 90 s: about 10 s left, so not the 30 s cap
    d = poll_delay_s(20, first_s=2, factor=1.5, cap_s=30, progress=90, elapsed_s=90, rng=rng)
    assert 8 <= d <= 12.5
