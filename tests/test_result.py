"""``Ok`` / ``Err``: the small pattern-matchable ``Result`` type (SPEC section 3)."""

from __future__ import annotations

import dataclasses

import pytest

from lexigram.events import Err, Ok, Result, UnwrapError


def test_ok_reports_success() -> None:
    """``Ok`` is ok and not err."""
    result = Ok(1)
    assert result.is_ok() is True
    assert result.is_err() is False


def test_err_reports_failure() -> None:
    """``Err`` is err and not ok."""
    result = Err("no")
    assert result.is_ok() is False
    assert result.is_err() is True


def test_ok_unwrap_returns_value() -> None:
    """``Ok.unwrap`` returns the value."""
    assert Ok({"a": 1}).unwrap() == {"a": 1}


def test_ok_unwrap_or_ignores_default() -> None:
    """``Ok.unwrap_or`` returns the value, not the default."""
    assert Ok(1).unwrap_or(2) == 1


def test_ok_expect_returns_value() -> None:
    """``Ok.expect`` returns the value."""
    assert Ok("v").expect("needed a value") == "v"


def test_ok_unwrap_err_raises() -> None:
    """``Ok.unwrap_err`` raises ``UnwrapError``."""
    with pytest.raises(UnwrapError, match="unwrap_err"):
        Ok(1).unwrap_err()


def test_err_unwrap_err_returns_error() -> None:
    """``Err.unwrap_err`` returns the error."""
    assert Err("declined").unwrap_err() == "declined"


def test_err_unwrap_raises() -> None:
    """``Err.unwrap`` raises ``UnwrapError`` mentioning the error."""
    with pytest.raises(UnwrapError, match="declined"):
        Err("declined").unwrap()


def test_err_unwrap_chains_exception_errors() -> None:
    """``Err(exc).unwrap()`` chains the exception as the cause."""
    cause = ConnectionError("down")
    with pytest.raises(UnwrapError) as info:
        Err(cause).unwrap()
    assert info.value.__cause__ is cause


def test_err_unwrap_or_returns_default() -> None:
    """``Err.unwrap_or`` returns the default."""
    assert Err("no").unwrap_or(7) == 7


def test_err_expect_raises_with_message() -> None:
    """``Err.expect`` raises ``UnwrapError`` carrying the caller's message."""
    with pytest.raises(UnwrapError, match="payment needed"):
        Err("no").expect("payment needed")


def test_results_are_frozen() -> None:
    """Both variants are frozen dataclasses."""
    ok: Ok[int] = Ok(1)
    err: Err[str] = Err("e")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.value = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        err.error = "f"  # type: ignore[misc]


def test_results_compare_by_value() -> None:
    """Equal contents make equal results; Ok never equals Err."""
    assert Ok(1) == Ok(1)
    assert Err("x") == Err("x")
    ok: object = Ok("x")
    assert ok != Err("x")


def describe(result: Result[int, str]) -> str:
    match result:
        case Ok(value):
            return f"ok {value}"
        case Err(error):
            return f"err {error}"


def test_results_are_pattern_matchable() -> None:
    """``match`` destructures ``Ok(value)`` and ``Err(error)``."""
    assert describe(Ok(3)) == "ok 3"
    assert describe(Err("bad")) == "err bad"


def test_unwrap_error_is_an_exception() -> None:
    """``UnwrapError`` is an ordinary ``Exception``."""
    assert issubclass(UnwrapError, Exception)
