"""Pure engine rules: interpreting step results, failure kinds, idempotency keys (SPEC 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexigram.events.sagas._engine.rules import describe_error, idempotency_key, interpret_result
from lexigram.events.sagas.context import Err, Ok, SagaStepResult

# --------------------------------------------------------------------------- interpret_result


def test_none_is_success_with_empty_output() -> None:
    """``None`` means success with an empty output."""
    assert interpret_result(None, "s")[:4] == (True, {}, "", False)


def test_dict_is_success_with_that_output() -> None:
    """A dict is the step's output."""
    assert interpret_result({"id": 1}, "s")[:4] == (True, {"id": 1}, "", False)


def test_step_result_ok_keeps_output() -> None:
    """``SagaStepResult.Ok(output)`` succeeds with its output."""
    assert interpret_result(SagaStepResult.Ok({"a": 1}), "s")[:4] == (True, {"a": 1}, "", False)


def test_step_result_fail_is_not_retryable() -> None:
    """``SagaStepResult.fail`` is a failure, not retried by default."""
    assert interpret_result(SagaStepResult.fail("declined"), "s")[:4] == (
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
    ok, _, error, _, _, _ = interpret_result(SagaStepResult(success=False), "s")
    assert ok is False
    assert error


def test_ok_with_dict_stores_the_dict() -> None:
    """``Ok(dict)`` stores that dict."""
    assert interpret_result(Ok({"a": 1}), "s")[:4] == (True, {"a": 1}, "", False)


@pytest.mark.parametrize("value", [42, "text", [1, 2], 2.5, True])
def test_ok_with_other_json_value_is_wrapped(value: object) -> None:
    """``Ok(v)`` with a non-dict JSON value stores ``{"value": v}``."""
    assert interpret_result(Ok(value), "s")[:4] == (True, {"value": value}, "", False)


def test_ok_none_stores_empty_output() -> None:
    """``Ok(None)`` stores ``{}``."""
    assert interpret_result(Ok(None), "s")[:4] == (True, {}, "", False)


def test_err_with_text_is_a_non_retryable_failure() -> None:
    """``Err(text)`` fails with that text, not retried."""
    assert interpret_result(Err("declined"), "s")[:4] == (False, {}, "declined", False)


def test_err_with_exception_describes_it() -> None:
    """``Err(exc)`` records the exception's type and message."""
    _, _, error, retryable, _, _ = interpret_result(Err(ConnectionError("down")), "s")
    assert error == "ConnectionError: down"
    assert retryable is False


@pytest.mark.parametrize("value", [42, "done", [1], True, object()])
def test_wrong_return_type_fails_naming_step_and_type(value: object) -> None:
    """Any other return value fails, not retried, naming the step and the type."""
    ok, output, error, retryable, _, _ = interpret_result(value, "charge")
    assert (ok, output, retryable) == (False, {}, False)
    assert "charge" in error
    assert type(value).__name__ in error


def test_step_result_with_non_dict_output_fails() -> None:
    """A ``SagaStepResult`` whose output is not a dict fails naming the step."""
    bad = SagaStepResult(success=True, output=[1, 2])  # type: ignore[arg-type]
    ok, _, error, _, _, _ = interpret_result(bad, "charge")
    assert ok is False
    assert "charge" in error
    assert "list" in error


def test_describe_error_with_message() -> None:
    """An exception renders as ``Type: message``."""
    assert describe_error(ValueError("bad")) == "ValueError: bad"


def test_describe_error_without_message() -> None:
    """An exception without message renders as its type name."""
    assert describe_error(ConnectionError()) == "ConnectionError"


# --------------------------------------------------------------------------- idempotency keys


def test_a_step_named_like_a_compensation_gets_its_own_key() -> None:
    """Step ``charge:compensate`` never shares a key with ``charge``'s compensation."""
    step = idempotency_key("s-1", "charge:compensate", 1, compensation=False)
    undo = idempotency_key("s-1", "charge", 1, compensation=True)
    assert step != undo


def test_keys_differ_by_saga_step_visit_and_role() -> None:
    """Every combination that looks alike in text still gets a distinct key."""
    keys = {
        idempotency_key("a", "b:c", 1, compensation=False),
        idempotency_key("a:b", "c", 1, compensation=False),
        idempotency_key("a", "b", 2, compensation=False),
        idempotency_key("a", "b:2", 1, compensation=False),
        idempotency_key("a", "b", 1, compensation=True),
        idempotency_key("a", "b", 1, compensation=False),
    }
    assert len(keys) == 6


@given(
    st.text(min_size=1, max_size=12),
    st.text(min_size=1, max_size=12),
    st.integers(min_value=1, max_value=5),
    st.booleans(),
)
def test_keys_are_stable(saga_id: str, step: str, visit: int, compensation: bool) -> None:
    """The same saga, step, visit and role always give the same key, readable by its parts."""
    key = idempotency_key(saga_id, step, visit, compensation=compensation)
    assert key == idempotency_key(saga_id, step, visit, compensation=compensation)
    assert key.startswith(f"{saga_id}:{step}:")


def test_retry_after_is_a_poll_not_a_failure() -> None:
    """``retry_after(s)``: not ok, no failure kind, the seconds in ``poll``."""
    outcome = interpret_result(SagaStepResult.retry_after(2.5), "check")
    assert (outcome.ok, outcome.kind, outcome.poll) == (False, None, 2.5)
    assert outcome.retryable  # a compensation that asks to poll is retried instead
    assert "retry_after" in outcome.error
