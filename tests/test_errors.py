"""The error tree: one root, the documented bases, structured attributes (SPEC section 9)."""

from __future__ import annotations

import logging

import pytest

import lexigram.events.sagas  # noqa: F401 - importing the package installs its NullHandler
from lexigram.events.sagas.errors import (
    CompensationFailedError,
    ConcurrencyConflictError,
    CorruptRecordError,
    NonRetryableError,
    SagaDataError,
    SagaDefinitionError,
    SagaError,
    SagaLeaseError,
    SagaNotFoundError,
    SagaStoreError,
    SagaStoreUnavailableError,
    SagaTimeoutError,
    SchemaVersionError,
)

ALL_ERRORS = [
    CompensationFailedError,
    ConcurrencyConflictError,
    CorruptRecordError,
    NonRetryableError,
    SagaDataError,
    SagaDefinitionError,
    SagaLeaseError,
    SagaNotFoundError,
    SagaStoreError,
    SagaStoreUnavailableError,
    SagaTimeoutError,
    SchemaVersionError,
]


@pytest.mark.parametrize("error", ALL_ERRORS)
def test_every_error_derives_from_saga_error(error: type[Exception]) -> None:
    """``SagaError`` is the one root."""
    assert issubclass(error, SagaError)


def test_saga_error_is_an_exception() -> None:
    """The root is an ordinary ``Exception``."""
    assert issubclass(SagaError, Exception)


def test_definition_error_is_a_value_error() -> None:
    """``SagaDefinitionError`` is also a ``ValueError``."""
    assert issubclass(SagaDefinitionError, ValueError)


def test_not_found_error_is_a_key_error() -> None:
    """``SagaNotFoundError`` is also a ``KeyError``."""
    assert issubclass(SagaNotFoundError, KeyError)


def test_timeout_error_is_a_timeout_error() -> None:
    """``SagaTimeoutError`` is also a ``TimeoutError``."""
    assert issubclass(SagaTimeoutError, TimeoutError)


def test_conflict_is_a_store_error() -> None:
    """``ConcurrencyConflictError`` belongs to the store errors."""
    assert issubclass(ConcurrencyConflictError, SagaStoreError)
    assert issubclass(SagaStoreUnavailableError, SagaStoreError)


def test_not_found_for_name_message_is_unquoted() -> None:
    """The unknown-name message is exact and ``str`` does not add KeyError's quotes."""
    error = SagaNotFoundError.for_name("orders")
    assert str(error) == "No saga registered with name 'orders'"
    assert error.saga_name == "orders"


def test_not_found_for_id_names_the_id() -> None:
    """The unknown-id error names and carries the id."""
    error = SagaNotFoundError.for_id("s-1")
    assert "s-1" in str(error)
    assert error.saga_id == "s-1"


def test_not_found_error_is_caught_as_key_error() -> None:
    """Code catching ``KeyError`` catches an unknown saga name."""
    with pytest.raises(KeyError):
        raise SagaNotFoundError.for_name("x")


def test_definition_error_carries_saga_and_step() -> None:
    """``SagaDefinitionError`` carries the saga and step names."""
    error = SagaDefinitionError("bad", saga_name="orders", step_name="charge")
    assert (error.saga_name, error.step_name, str(error)) == ("orders", "charge", "bad")


def test_conflict_carries_versions() -> None:
    """``ConcurrencyConflictError`` carries the saga id and both versions, and names them."""
    error = ConcurrencyConflictError("s-1", expected_version=3, actual_version=5)
    assert (error.saga_id, error.expected_version, error.actual_version) == ("s-1", 3, 5)
    assert "3" in str(error)
    assert "5" in str(error)


def test_conflict_on_missing_record() -> None:
    """A conflict against a missing record has ``actual_version`` None."""
    error = ConcurrencyConflictError("s-1", expected_version=2, actual_version=None)
    assert error.actual_version is None
    assert "no record" in str(error)


def test_timeout_error_carries_step_and_limit() -> None:
    """``SagaTimeoutError`` carries the saga, step and limit."""
    error = SagaTimeoutError("late", saga_id="s", step_name="charge", timeout=2.0)
    assert (error.saga_id, error.step_name, error.timeout) == ("s", "charge", 2.0)


def test_compensation_failed_carries_steps() -> None:
    """``CompensationFailedError`` lists the steps whose compensation failed."""
    error = CompensationFailedError("undo failed", saga_id="s", steps=["b", "a"])
    assert error.steps == ("b", "a")


def test_data_error_carries_keys() -> None:
    """``SagaDataError`` names the offending keys."""
    assert SagaDataError("bad", keys=["when"]).keys == ("when",)


def test_lease_error_carries_owner() -> None:
    """``SagaLeaseError`` names the worker holding the saga."""
    assert SagaLeaseError("held", saga_id="s", owner="w-2").owner == "w-2"


def test_corrupt_record_error_names_saga_and_field() -> None:
    """``CorruptRecordError`` names the saga and the field."""
    error = CorruptRecordError("bad status", saga_id="s-1", field="status")
    assert error.field == "status"
    assert "s-1" in str(error)


def test_schema_version_error_carries_versions() -> None:
    """``SchemaVersionError`` carries the table and both versions."""
    error = SchemaVersionError("old", table="sagas", found_version="0", supported_version=1)
    assert (error.table, error.found_version, error.supported_version) == ("sagas", "0", 1)


def test_non_retryable_error_has_a_default_message() -> None:
    """``NonRetryableError()`` can be raised without arguments."""
    assert str(NonRetryableError())


def test_non_retryable_error_can_be_subclassed() -> None:
    """Users subclass ``NonRetryableError`` for business rules."""

    class InvalidOrderError(NonRetryableError):
        pass

    assert isinstance(InvalidOrderError("bad order"), NonRetryableError)


def test_errors_keep_message_attribute() -> None:
    """Every saga error exposes its message as ``message``."""
    assert SagaError("boom", saga_id="s").message == "boom"
    assert SagaError("boom", saga_id="s").saga_id == "s"


def test_package_logger_has_a_null_handler() -> None:
    """``lexigram.events.sagas`` logs through a logger with a ``NullHandler``."""
    logger = logging.getLogger("lexigram.events.sagas")
    assert any(isinstance(handler, logging.NullHandler) for handler in logger.handlers)


def test_library_does_not_configure_the_root_logger() -> None:
    """Importing the library adds no handler outside its own logger."""
    handlers = logging.getLogger().handlers
    assert not any(type(handler).__module__.startswith("lexigram") for handler in handlers)
