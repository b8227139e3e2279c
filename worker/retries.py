"""When a step tries again, and when it gives up: one policy, a named case for each thing that
may fail for now (as dramatiq's Retries middleware, in one object).

Every case answers with seconds to wait before the next try, or None: give up.

- `submit`: a create (or the lookup of one) that failed for now. Counted by the record's
  `attempts`; given up at `submit_max_attempts`; waits the provider's hint (up to
  `retry_cap_s`), else a backoff.
- `fault`: an exception nobody anticipated. Counted by the entry's faults in a row; given up
  at `fault_max_attempts`; waits a backoff (at least 0.1 s).
- `lost_step`: a claim that never finished (its worker died, its message was lost). Counted
  by the record's `recoveries`; given up past `fault_max_attempts`; due again at once.
- `copy`: a round of downloads into S3 (`copy_tries` each) whose bytes came short or
  broken. Counted by the record's `copy_attempts`; given up at `download_max_attempts`;
  waits a backoff.
- `file_host`: the provider's file host did not answer (no connection, a reset, a timeout,
  a 5xx, a 429), or the provider could not be asked for a fresh file URL. Counted by the
  record's `fetch_failures`; given up past the job's deadline (once `download_max_attempts`
  of them failed: a video seen done at the deadline still gets its tries); waits a backoff,
  the last try landing on the deadline. Every `REFRESH_URL_EVERY`-th failure drops the URL
  in hand, so that the next try asks the provider for a fresh one (the old one may have
  expired meanwhile, or point at a host the provider has left).
- `url_refused`: the file host refused a fresh file URL (a 403, 404, 410: a CDN that has not
  got the file yet, or a file gone). Counted by the record's `url_refusals`; given up at
  `URL_REFUSALS_MAX`; waits `retry_base_s`, doubling.
- `storage_outage`: our own S3 is down. Counts nothing; given up past the job's deadline;
  waits the backoff after the last copy round.
- `webhook`: a delivery. Counted by the delivery's `attempts`; given up (dead-lettered) when
  `webhook_schedule_s` is spent; waits the schedule's step, or a longer Retry-After.

The backoff is exponential with full jitter (worker/timing.py), between `retry_base_s` and
`retry_cap_s`. A batch's entry has no record: a claim of it that never finished counts as one
of its faults.
"""

from __future__ import annotations

import random

from producer.core.errors import RetryableError
from producer.core.settings import Settings
from worker.timing import bounded_hint_s, retry_delay_s

# A fault's retry is never due at once: a step that raised at once would spin.
MIN_FAULT_DELAY_S = 0.1
# A file host that keeps failing: every third try asks the provider for a fresh URL first.
REFRESH_URL_EVERY = 3
# Fresh file URLs refused before the video is given up: a 404 right after the provider said
# done may be a CDN that has not got the file yet, so two more fresh URLs, seconds apart.
URL_REFUSALS_MAX = 3


class Retries:
    """The retry policy of every step (see the module's docstring).

    Args:
        settings: the limits and the backoff's base and cap.
        rng: the backoff's jitter (tests pin it).
    """

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        return retry_delay_s(attempt, s.retry_base_s, s.retry_cap_s, self.rng)

    def submit(self, attempts: int, error: RetryableError) -> float | None:
        """After the job's attempts-th call to submit it (a create or a lookup) failed for
        now: wait the provider's hint (capped), else back off; give up once the attempts
        reach submit_max_attempts."""
        if attempts >= self.settings.submit_max_attempts:
            return None
        hint_s = bounded_hint_s(error.delay_s, self.settings.retry_cap_s)
        return hint_s if hint_s is not None else self._backoff(attempts - 1)

    def fault(self, faults: int) -> float | None:
        """After the entry's faults-th unexpected exception in a row (a step that completes
        resets the count): back off; give up once they reach fault_max_attempts."""
        if faults >= self.settings.fault_max_attempts:
            return None
        return max(self._backoff(faults), MIN_FAULT_DELAY_S)

    def lost_step(self, recoveries: int) -> bool:
        """Whether a job whose steps were claimed and never finished recoveries times (its
        worker died, its message was lost) is still run: a job survives fault_max_attempts
        of them."""
        return recoveries <= self.settings.fault_max_attempts

    @property
    def copy_tries(self) -> int:
        """Downloads one finalize step tries before its round counts as failed."""
        return self.settings.download_max_attempts

    def copy(self, copy_attempts: int) -> float | None:
        """After the job's copy_attempts-th round of downloads failed: back off; give up
        once the rounds reach download_max_attempts."""
        if copy_attempts >= self.settings.download_max_attempts:
            return None
        return self._backoff(copy_attempts - 1)

    def file_host(self, fetch_failures: int, left_s: float) -> float | None:
        """After the job's fetch_failures-th download that the file host did not answer,
        left_s before the job's deadline: back off, never past the deadline; give up once the
        deadline has passed and download_max_attempts of them failed."""
        if left_s <= 0 and fetch_failures >= self.settings.download_max_attempts:
            return None
        delay_s = self._backoff(fetch_failures - 1)
        return min(delay_s, left_s) if left_s > 0 else delay_s

    def refresh_url(self, fetch_failures: int) -> bool:
        """Whether the next try asks the provider for a fresh file URL first."""
        return fetch_failures % REFRESH_URL_EVERY == 0

    def url_refused(self, url_refusals: int) -> float | None:
        """After the url_refusals-th fresh file URL was refused: wait retry_base_s, doubling
        (a CDN catching up needs seconds, not a lucky zero of jitter); give up at
        URL_REFUSALS_MAX."""
        if url_refusals >= URL_REFUSALS_MAX:
            return None
        return min(self.settings.retry_base_s * 2 ** (url_refusals - 1), self.settings.retry_cap_s)

    def storage_outage(self, left_s: float) -> float | None:
        """While our own S3 is down, left_s before the job's deadline: back off as after the
        last copy round (an outage is not cured by asking often), without spending the job's
        rounds; give up once the deadline has passed, like the generation itself."""
        if left_s < 0:
            return None
        return self._backoff(self.settings.download_max_attempts)

    @property
    def webhook_attempts(self) -> int:
        """Delivery attempts of one event before it is dead-lettered."""
        return len(self.settings.webhook_schedule_s)

    def webhook(self, attempts: int, retry_after_s: float | None) -> float | None:
        """After the attempts-th delivery failed: the schedule's wait, or the receiver's
        Retry-After if longer (up to the schedule's longest), plus up to 10 % jitter so that
        a receiver coming back is not hit all at once; None once the schedule is spent."""
        schedule_s = self.settings.webhook_schedule_s
        if attempts >= len(schedule_s):
            return None
        delay_s = schedule_s[attempts]
        if (hint_s := bounded_hint_s(retry_after_s, max(schedule_s))) is not None:
            delay_s = max(delay_s, hint_s)
        return delay_s * (self.rng or random).uniform(1.0, 1.1)
