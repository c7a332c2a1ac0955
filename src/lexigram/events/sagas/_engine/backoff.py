"""The one backoff policy: how long to wait before the next try of anything.

Step and compensation retries, writes retried while the store is down, and claims retried
by ``recover()`` all wait ``Backoff.delay(attempt)``; only their constants differ. Time is
never slept here: callers pass the delay to the sleep they were given (``asyncio.sleep`` by
default, ``testing.NoWaits`` in tests), so tests skip waits instead of sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from lexigram.events.sagas.config import SagaConfig

__all__ = ["CLAIM_RETRY", "STORE_RETRY", "Backoff", "retry_backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter.

    The delay before try ``n + 1`` (after ``n`` failed tries) is
    ``min(base * multiplier ** (n - 1), cap)`` scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``.
    """

    base: float
    multiplier: float = 2.0
    cap: float = 60.0
    jitter: float = 0.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed try ``attempt`` (1-based); ``rand`` gives ``[0, 1)``."""
        try:
            grown = self.base * self.multiplier ** (attempt - 1)
        except OverflowError:
            grown = self.cap
        delay = min(grown, self.cap)
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, delay)


def retry_backoff(retry_delay: float, config: SagaConfig) -> Backoff:
    """The backoff of a step's (or compensation's) retries under ``config``."""
    return Backoff(retry_delay, config.backoff_multiplier, config.max_retry_delay, config.jitter)


STORE_RETRY = Backoff(0.05, 2.0, 2.0)
"""Writes retried while the store cannot be reached: 50 ms doubling up to 2 s, forever."""

CLAIM_RETRY = Backoff(0.1, 2.0, 3.2)
"""Claims ``recover()`` retries while the store cannot be reached (a few times)."""
