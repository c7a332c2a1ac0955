"""The one backoff policy: retry delays, caps and jitter, and the injected sleep (SPEC 4)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexigram.events.sagas._engine.backoff import STORE_RETRY, Backoff, retry_backoff
from lexigram.events.sagas._engine.flow import RetryPolicy
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.testing import NoWaits
from tests.support.helpers import Script, Tuning, manager_for, raise_each


def policy(delay: float) -> RetryPolicy:
    return RetryPolicy(max_retries=10, retry_delay=delay, timeout=None)


def retry_delay(
    attempt: int, step: RetryPolicy, config: SagaConfig, rand: Callable[[], float]
) -> float:
    return retry_backoff(step.retry_delay, config).delay(attempt, rand)


NO_JITTER = SagaConfig(jitter=0)


def middle() -> float:
    return 0.5


# --------------------------------------------------------------------------- retry_delay


def test_first_retry_waits_the_base_delay() -> None:
    """Retry 1 waits ``retry_delay``."""
    assert retry_delay(1, policy(1.0), NO_JITTER, middle) == pytest.approx(1.0)


def test_delays_back_off_exponentially() -> None:
    """Retry n waits ``retry_delay * backoff_multiplier ** (n - 1)``."""
    config = SagaConfig(jitter=0, backoff_multiplier=3.0)
    delays = [retry_delay(n, policy(0.5), config, middle) for n in (1, 2, 3, 4)]
    assert delays == pytest.approx([0.5, 1.5, 4.5, 13.5])


def test_delay_is_capped_by_max_retry_delay() -> None:
    """No delay exceeds ``max_retry_delay`` (before jitter)."""
    config = SagaConfig(jitter=0, max_retry_delay=5.0)
    assert retry_delay(10, policy(1.0), config, middle) == pytest.approx(5.0)


def test_zero_base_delay_stays_zero() -> None:
    """``retry_delay=0`` never waits."""
    assert retry_delay(5, policy(0.0), SagaConfig(), lambda: 0.99) == 0.0


def test_jitter_lower_bound() -> None:
    """The smallest random draw scales the delay by ``1 - jitter``."""
    config = SagaConfig(jitter=0.2)
    assert retry_delay(1, policy(10.0), config, lambda: 0.0) == pytest.approx(8.0)


def test_jitter_upper_bound() -> None:
    """The largest random draw approaches ``1 + jitter``."""
    config = SagaConfig(jitter=0.2)
    assert retry_delay(1, policy(10.0), config, lambda: 1.0) == pytest.approx(12.0)


def test_jitter_applies_after_the_cap() -> None:
    """A capped delay is still jittered around the cap."""
    config = SagaConfig(jitter=0.5, max_retry_delay=4.0)
    assert retry_delay(10, policy(1.0), config, lambda: 0.0) == pytest.approx(2.0)


@given(
    attempt=st.integers(min_value=1, max_value=30),
    base=st.floats(min_value=0, max_value=100),
    multiplier=st.floats(min_value=1, max_value=5),
    cap=st.floats(min_value=0, max_value=120),
    jitter=st.floats(min_value=0, max_value=1),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_delay_stays_within_the_documented_bounds(
    attempt: int, base: float, multiplier: float, cap: float, jitter: float, draw: float
) -> None:
    """Every delay lies in ``[d * (1 - jitter), d * (1 + jitter)]`` of the capped delay d."""
    config = SagaConfig(backoff_multiplier=multiplier, max_retry_delay=cap, jitter=jitter)
    expected = min(base * multiplier ** (attempt - 1), cap)
    delay = retry_delay(attempt, policy(base), config, lambda: draw)
    assert delay >= 0
    assert expected * (1 - jitter) - 1e-9 <= delay <= expected * (1 + jitter) + 1e-9


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    """Attempt 5,000 neither overflows nor exceeds the cap."""
    assert Backoff(1.0, 2.0, 7.0).delay(5_000) == pytest.approx(7.0)


def test_store_outage_retries_double_up_to_two_seconds() -> None:
    """Writes retried while the store is down wait 50 ms, 100 ms, ... at most 2 s."""
    delays = [STORE_RETRY.delay(n) for n in (1, 2, 3, 10)]
    assert delays == pytest.approx([0.05, 0.1, 0.2, 2.0])


# --------------------------------------------------------------------------- injected sleep


async def test_no_waits_removes_a_steps_own_retry_delay() -> None:
    """``sleep=NoWaits()`` skips every delay, a step's own ``retry_delay`` included."""
    no_waits = NoWaits()
    script = Script()
    script.behaviours["b"] = raise_each(ConnectionError("1"), ConnectionError("2"))
    manager = manager_for(
        script,
        config=SagaConfig(jitter=0, max_retry_delay=1000.0),
        tuning={"b": Tuning(max_retries=3, retry_delay=100.0)},
        sleep=no_waits,
    )
    record = await asyncio.wait_for(manager.execute("scripted"), 5)
    await manager.close()
    assert record.status.value == "completed"
    assert no_waits.delays == [100.0, 200.0]


async def test_no_waits_covers_compensation_retries() -> None:
    """A compensation's retry delays go through the injected sleep too."""
    no_waits = NoWaits()
    script = Script()
    script.behaviours["c"] = raise_each(ValueError("declined"))
    script.undo_behaviours["a"] = raise_each(ConnectionError("refund down"))
    manager = manager_for(
        script,
        config=SagaConfig(jitter=0),
        tuning={"a": Tuning(undo_max_retries=2, undo_retry_delay=30.0)},
        sleep=no_waits,
    )
    record = await asyncio.wait_for(manager.execute("scripted"), 5)
    await manager.close()
    assert record.status.value == "compensated"
    assert no_waits.delays == [30.0]
