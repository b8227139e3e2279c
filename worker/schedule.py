"""When to try again: backoff for retries, and the poll schedule.

Pure functions of their inputs (and a random source), so tests can pin them down.
"""

from __future__ import annotations

import random


def retry_delay_s(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter (AWS's recipe): uniform(0, min(cap, base*2^n)).

    Full jitter spreads a crowd of jobs that failed together (a provider outage) so they
    don't all come back at once.
    """
    r = rng or random
    return r.uniform(0, min(cap_s, base_s * 2 ** max(attempt, 0)))


def poll_delay_s(
    polls: int,
    *,
    first_s: float,
    factor: float,
    cap_s: float,
    hint_s: float | None = None,
    progress: int | None = None,
    elapsed_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """How long to wait before the next status query of a running job.

    Grows from first_s by factor per poll up to cap_s, with +-20 % jitter so that jobs
    submitted together don't poll in lockstep. A provider's poll-after hint (OpenAI's
    openai-poll-after-ms) is honoured as a lower bound. When the provider reports progress,
    the remaining time it implies bounds the wait, so a nearly finished job is not left
    waiting a full cap_s.

    Args:
        polls: status queries made so far.
        hint_s: the provider's poll-after or Retry-After hint, if any.
        progress: the provider's 0-100 progress, if any.
        elapsed_s: seconds since the provider accepted the job.
    """
    r = rng or random
    delay = min(cap_s, first_s * factor ** max(polls, 0))
    if progress is not None and elapsed_s is not None and 0 < progress < 100:
        remaining_s = elapsed_s * (100 - progress) / progress
        delay = min(delay, max(first_s, remaining_s))
    delay *= r.uniform(0.8, 1.2)
    if hint_s is not None:
        delay = max(delay, hint_s)
    return min(delay, cap_s) if hint_s is None else delay
