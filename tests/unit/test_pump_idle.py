"""How long an idle pump waits: the deployment's pumps share the watch."""

from __future__ import annotations

import pytest

from worker.pump import IDLE_MAX_S, idle_wait_s


def test_one_pump_waits_one_interval() -> None:
    assert idle_wait_s(0.05, 1, jitter=1.0) == pytest.approx(0.05)


def test_n_pumps_each_wait_n_intervals_so_the_deployment_still_passes_once_an_interval() -> None:
    for pumps in (2, 4, 8):
        wait_s = idle_wait_s(0.05, pumps, jitter=1.0)
        assert pumps / wait_s == pytest.approx(1 / 0.05)


def test_the_wait_is_capped_however_many_pumps_there_are() -> None:
    assert idle_wait_s(0.05, 10_000, jitter=1.0) == IDLE_MAX_S


def test_no_count_yet_counts_as_one_pump_and_jitter_scales_the_wait() -> None:
    assert idle_wait_s(0.05, 0, jitter=1.0) == pytest.approx(0.05)
    assert idle_wait_s(0.05, 2, jitter=0.5) == pytest.approx(0.05)
    assert idle_wait_s(0.05, 2, jitter=1.5) == pytest.approx(0.15)
