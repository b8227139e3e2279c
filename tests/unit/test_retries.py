"""The retry policy: each named case's wait, and when it gives up (worker/retries.py)."""

import math
import random

import pytest

from producer.core.errors import RetryableError
from producer.core.settings import Settings
from worker.retries import MIN_FAULT_DELAY_S, Retries


def _retries(**settings) -> Retries:
    return Retries(Settings(**settings), rng=random.Random(3))


def _later(delay_s=None) -> RetryableError:
    return RetryableError("busy", delay_s=delay_s)


def test_submit_waits_the_providers_hint():
    assert _retries().submit(1, _later(7.5)) == 7.5


def test_submit_caps_the_providers_hint_at_retry_cap():
    assert _retries(retry_cap_s=30).submit(1, _later(3600)) == 30


@pytest.mark.parametrize("hint", [-1.0, math.inf, math.nan])
def test_submit_ignores_a_hint_it_cannot_honour_and_backs_off(hint):
    delay_s = _retries(retry_base_s=2, retry_cap_s=120).submit(3, _later(hint))
    assert delay_s is not None and 0 <= delay_s <= 2 * 2**2


def test_submit_backoff_grows_with_the_attempts_up_to_the_cap():
    retries = _retries(retry_base_s=2, retry_cap_s=20, submit_max_attempts=50)
    first = [retries.submit(1, _later()) for _ in range(200)]
    late = [retries.submit(20, _later()) for _ in range(200)]
    assert max(first) <= 2  # attempt 1: uniform(0, base)
    assert max(late) <= 20 and max(late) > 15  # capped, and spread up to the cap


def test_submit_gives_up_once_the_attempts_reach_the_maximum():
    retries = _retries(submit_max_attempts=3)
    assert retries.submit(2, _later(1)) == 1
    assert retries.submit(3, _later(1)) is None


def test_a_fault_gives_up_at_fault_max_attempts_in_a_row():
    retries = _retries(fault_max_attempts=4)
    assert all(retries.fault(n) is not None for n in range(1, 4))
    assert retries.fault(4) is None


def test_a_fault_is_never_retried_at_once():
    retries = Retries(Settings(retry_base_s=1e-9), rng=random.Random(0))
    assert all(retries.fault(1) >= MIN_FAULT_DELAY_S for _ in range(50))


def test_a_job_survives_as_many_lost_steps_as_fault_max_attempts():
    retries = _retries(fault_max_attempts=3)
    assert retries.lost_step(3)
    assert not retries.lost_step(4)


def test_copy_rounds_give_up_at_download_max_attempts():
    retries = _retries(download_max_attempts=3, retry_base_s=2)
    assert retries.copy_tries == 3
    assert 0 <= retries.copy(1) <= 2
    assert 0 <= retries.copy(2) <= 4
    assert retries.copy(3) is None


def test_storage_outage_waits_until_the_deadline_then_gives_up():
    retries = _retries(download_max_attempts=2, retry_base_s=2, retry_cap_s=120)
    assert 0 <= retries.storage_outage(1) <= 2 * 2**2  # as after the last copy round
    assert retries.storage_outage(-1) is None


def test_a_file_host_is_waited_out_with_backoff_never_past_the_deadline():
    retries = _retries(download_max_attempts=4, retry_base_s=2, retry_cap_s=60)
    assert all(0 <= retries.file_host(1, 600) <= 2 for _ in range(50))
    assert max(retries.file_host(20, 600) for _ in range(200)) > 40  # grows to the cap
    assert all(retries.file_host(20, 3) <= 3 for _ in range(50))  # the last lands on it


def test_a_file_host_is_given_up_past_the_deadline_once_its_tries_are_spent():
    retries = _retries(download_max_attempts=4)
    assert retries.file_host(3, -1) is not None  # seen done late: still its tries
    assert retries.file_host(4, -1) is None
    assert retries.file_host(400, 1) is not None  # before the deadline: never


def test_every_third_failure_of_a_file_host_refreshes_its_url():
    assert [n for n in range(1, 10) if _retries().refresh_url(n)] == [3, 6, 9]


def test_a_refused_fresh_url_waits_seconds_doubling_then_gives_up():
    retries = _retries(retry_base_s=2, retry_cap_s=60)
    assert [retries.url_refused(n) for n in (1, 2, 3)] == [2, 4, None]


def test_webhook_follows_its_schedule_with_up_to_ten_percent_jitter():
    retries = _retries(webhook_schedule_s=[0, 5, 300])
    assert 5 <= retries.webhook(1, None) <= 5.5
    assert 300 <= retries.webhook(2, None) <= 330
    assert retries.webhook_attempts == 3


def test_webhook_honours_a_longer_retry_after_up_to_the_schedules_longest_wait():
    retries = _retries(webhook_schedule_s=[0, 5, 300])
    assert 60 <= retries.webhook(1, 60) <= 66
    assert 300 <= retries.webhook(1, 10_000) <= 330
    assert 5 <= retries.webhook(1, 1) <= 5.5  # a shorter one does not hurry it


def test_webhook_gives_up_once_its_schedule_is_spent():
    assert _retries(webhook_schedule_s=[0, 5]).webhook(2, None) is None
