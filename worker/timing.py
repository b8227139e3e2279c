"""When to look at a job again: backoff for retries, and when to poll a running job.

Pure functions of their inputs (and a random source), so tests can pin them down.

Polling spends the provider's rate limit and our CPU on every status query, and every second
between a video's end and our query is latency the user sees. So the next query aims at the
moment the video is expected to be done, from the best evidence there is:
1. progress the provider reports: the rate between two reports says when it reaches 100;
2. failing that, how long this model took for earlier jobs (its fastest recent runs);
3. failing both, a geometric backoff from poll_first_s to poll_cap_s.
Once a job is past its expected end, it is polled every ``LATE_SHARE`` of its age, so a video
is noticed within that share of its generation time (or poll_first_s, whichever is more).

A job whose provider calls back (README "Provider callbacks") is polled as a reconciler
instead (`reconcile_poll_s`): the callback makes its poll due when the video is done, so the
schedule only has to catch a callback that never came: first just after nearly every job of
its shape has ended, then with a backoff.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# Past its expected end, a job is polled every this share of its age.
LATE_SHARE = 0.07
# With one progress report and no rate yet, go only this share of the way to the end it
# implies: a queued phase at 0 % makes that estimate run long.
FIRST_REPORT_SHARE = 0.5


def retry_delay_s(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter (AWS's recipe): uniform(0, min(cap, base*2^n)).

    Full jitter spreads a crowd of jobs that failed together (a provider outage) so they
    don't all come back at once.
    """
    r = rng or random
    return r.uniform(0, min(cap_s, base_s * 2 ** max(attempt, 0)))


def bounded_hint_s(hint_s: float | None, cap_s: float) -> float | None:
    """A provider's wait hint (Retry-After, poll-after) we are willing to honour: finite,
    not negative, at most cap_s; None for anything else."""
    if hint_s is None or not math.isfinite(hint_s) or hint_s < 0:
        return None
    return min(hint_s, cap_s)


def estimate_from_progress(
    progress: int | None,
    elapsed_s: float,
    *,
    last_progress: int | None,
    last_elapsed_s: float | None,
) -> float | None:
    """When (seconds after submission) a job reporting progress should be done; None when
    the report says nothing about it (no progress, 0 %, 100 %)."""
    if progress is None or not 0 < progress < 100 or elapsed_s <= 0:
        return None
    if (
        last_progress  # a 0 % report marks a queued job, not where its progress line starts
        and last_elapsed_s is not None
        and progress > last_progress
        and elapsed_s > last_elapsed_s
    ):
        rate = (progress - last_progress) / (elapsed_s - last_elapsed_s)
        return elapsed_s + (100 - progress) / rate
    # One report past 0 only: its job may have left a queue just before it, so the line from
    # zero can be far too slow; go at most the job's age again (damped) and measure a rate.
    implied = elapsed_s * 100 / progress
    return elapsed_s + min(implied - elapsed_s, elapsed_s) * FIRST_REPORT_SHARE


@dataclass(frozen=True)
class PollTiming:
    """The poll settings: poll_first_s, poll_factor, poll_cap_s."""

    first_s: float
    factor: float
    cap_s: float


def next_poll_s(
    timing: PollTiming,
    *,
    polls: int,
    elapsed_s: float,
    estimate_s: float | None = None,
    usual_s: float | None = None,
    hint_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """How long to wait before the next status query of a job at the provider.

    Args:
        polls: status queries made so far.
        elapsed_s: seconds since the provider accepted the job.
        estimate_s: when (s after submission) its progress says it will be done, if known.
        usual_s: how long this model usually takes at the least (from earlier jobs).
        hint_s: the provider's poll-after or Retry-After hint, already bounded.

    Returns:
        Seconds, at most timing.cap_s and at least the provider's hint, jittered where
        jobs submitted together would otherwise poll in lockstep.
    """
    r = rng or random
    late_s = max(timing.first_s, LATE_SHARE * elapsed_s)
    expected = estimate_s if estimate_s is not None else usual_s
    if expected is not None and expected > elapsed_s + late_s:
        delay = expected - elapsed_s  # aim at the expected end itself
    elif expected is not None:
        delay = late_s * r.uniform(0.85, 1.0)
    else:
        delay = min(timing.cap_s, timing.first_s * timing.factor ** max(polls, 0))
        delay *= r.uniform(0.85, 1.15)
    if hint_s is not None:
        delay = max(delay, hint_s)
    return min(delay, timing.cap_s)


def usual_generation_s(
    durations_s: Sequence[float], min_samples: int = 5, quantile: float = 0.05
) -> float | None:
    """The time to first poll a new job of a model at: the 5th percentile of how long its
    recent jobs took, so that 19 jobs in 20 are polled first before they end (another
    quantile: the reconciler's 95th, by which nearly every job has ended). None until there
    are min_samples to go by."""
    clean = sorted(d for d in durations_s if math.isfinite(d) and d > 0)
    if len(clean) < min_samples:
        return None
    return clean[int(quantile * (len(clean) - 1))]


# The reconciler's first poll comes this share after the time by which 19 jobs in 20 of the
# shape ended (plus poll_first_s): a callback is normally there well before, and one poll per
# job is the goal (issue 20: at most 1.2 status calls per job with callbacks).
RECONCILE_MARGIN_SHARE = 0.1
# Past that, a job whose callback has not come is polled every this share of its age.
RECONCILE_SHARE = 0.25


def reconcile_poll_s(
    timing: PollTiming,
    *,
    elapsed_s: float,
    late_s: float | None,
    rng: random.Random | None = None,
) -> float:
    """How long to wait before the next status query of a job whose provider calls back.

    Args:
        elapsed_s: seconds since the provider accepted the job.
        late_s: by when (s after submission) 19 in 20 recent jobs of its shape had ended;
            None: no history yet.

    Returns:
        Seconds: up to the expected end plus a margin (not bounded by poll_cap_s: the
        callback, not this poll, is what notices a video on time), then a backoff of
        RECONCILE_SHARE of the job's age, at most poll_cap_s.
    """
    r = rng or random
    if late_s is None:
        return timing.cap_s * r.uniform(0.85, 1.0)
    due_s = late_s * (1 + RECONCILE_MARGIN_SHARE) + timing.first_s
    if due_s > elapsed_s + timing.first_s:
        return due_s - elapsed_s
    return min(
        timing.cap_s, max(timing.first_s, RECONCILE_SHARE * elapsed_s) * r.uniform(0.85, 1.0)
    )
