"""Capped exponential backoff with jitter: ``min(base * 2**attempt, cap)`` +- ``jitter`` (a fraction).

Used for the initial NATS connect, JetStream recovery after 503/missing consumers, Redis probes,
nak delays and the workers' wake-up listener, so that no fault ever turns into a hot loop, and
the jitter keeps many processes that lost the same server from coming back in step.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, base: float, cap: float, jitter: float = 0.2) -> float:
    """Return the delay before retry number ``attempt`` (0-based), in seconds.

    Parameters:
      attempt(int): How many attempts already failed (0 for the first retry).
      base(float): The first delay, in seconds.
      cap(float): The largest delay before jitter, in seconds.
      jitter(float): +- this fraction of the delay, drawn uniformly (0 disables).
    """
    delay = min(base * (2 ** min(attempt, 32)), cap)
    if jitter > 0:
        delay *= 1 + random.uniform(-jitter, jitter)
    return float(max(delay, 0.0))
