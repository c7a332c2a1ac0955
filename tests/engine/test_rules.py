"""Pure engine rules: interpreting step results and retry delays (SPEC sections 3 and 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexigram.events.sagas._engine.flow import RetryPolicy
from lexigram.events.sagas._engine.rules import describe_error, interpret_result, retry_delay
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import Err, Ok, SagaStepResult


def policy(delay: float) -> RetryPolicy:
    return RetryPolicy(max_retries=10, retry_delay=delay, timeout=None)


NO_JITTER = SagaConfig(jitter=0)


def middle() -> float:
    return 0.5


# --------------------------------------------------------------------------- interpret_result


def test_none_is_success_with_empty_output() -> None:
    """``None`` means success with an empty output."""
    assert interpret_result(None, "s") == (True, {}, "", False)


def test_dict_is_success_with_that_output() -> None:
    """A dict is the step's output."""
    assert interpret_result({"id": 1}, "s") == (True, {"id": 1}, "", False)


def test_step_result_ok_keeps_output() -> None:
    """``SagaStepResult.Ok(output)`` succeeds with its output."""
    assert interpret_result(SagaStepResult.Ok({"a": 1}), "s") == (True, {"a": 1}, "", False)


def test_step_result_fail_is_not_retryable() -> None:
    """``SagaStepResult.fail`` is a failure, not retried by default."""
    assert interpret_result(SagaStepResult.fail("declined"), "s") == (
        False,
        {},
        "declined",
        False,
    )


def test_step_result_fail_retryable() -> None:
    """``fail(..., retryable=True)`` asks for a retry."""
    assert interpret_result(SagaStepResult.fail("busy", retryable=True), "s")[3] is True


def test_step_result_failure_without_error_gets_a_message() -> None:
    """A failure with no error text still records why."""
    ok, _, error, _ = interpret_result(SagaStepResult(success=False), "s")
    assert ok is False
    assert error


def test_ok_with_dict_stores_the_dict() -> None:
    """``Ok(dict)`` stores that dict."""
    assert interpret_result(Ok({"a": 1}), "s") == (True, {"a": 1}, "", False)


@pytest.mark.parametrize("value", [42, "text", [1, 2], 2.5, True])
def test_ok_with_other_json_value_is_wrapped(value: object) -> None:
    """``Ok(v)`` with a non-dict JSON value stores ``{"value": v}``."""
    assert interpret_result(Ok(value), "s") == (True, {"value": value}, "", False)


def test_ok_none_stores_empty_output() -> None:
    """``Ok(None)`` stores ``{}``."""
    assert interpret_result(Ok(None), "s") == (True, {}, "", False)


def test_err_with_text_is_a_non_retryable_failure() -> None:
    """``Err(text)`` fails with that text, not retried."""
    assert interpret_result(Err("declined"), "s") == (False, {}, "declined", False)


def test_err_with_exception_describes_it() -> None:
    """``Err(exc)`` records the exception's type and message."""
    _, _, error, retryable = interpret_result(Err(ConnectionError("down")), "s")
    assert error == "ConnectionError: down"
    assert retryable is False


@pytest.mark.parametrize("value", [42, "done", [1], True, object()])
def test_wrong_return_type_fails_naming_step_and_type(value: object) -> None:
    """Any other return value fails, not retried, naming the step and the type."""
    ok, output, error, retryable = interpret_result(value, "charge")
    assert (ok, output, retryable) == (False, {}, False)
    assert "charge" in error
    assert type(value).__name__ in error


def test_step_result_with_non_dict_output_fails() -> None:
    """A ``SagaStepResult`` whose output is not a dict fails naming the step."""
    bad = SagaStepResult(success=True, output=[1, 2])  # type: ignore[arg-type]
    ok, _, error, _ = interpret_result(bad, "charge")
    assert ok is False
    assert "charge" in error
    assert "list" in error


def test_describe_error_with_message() -> None:
    """An exception renders as ``Type: message``."""
    assert describe_error(ValueError("bad")) == "ValueError: bad"


def test_describe_error_without_message() -> None:
    """An exception without message renders as its type name."""
    assert describe_error(ConnectionError()) == "ConnectionError"


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
