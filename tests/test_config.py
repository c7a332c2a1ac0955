"""``SagaConfig``: upstream defaults, added settings, validation (SPEC sections 4 and 10)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from lexigram.events.config import SagaConfig as ReexportedConfig
from lexigram.events.sagas.config import DEFAULT_NON_RETRYABLE, MAX_SECONDS, SagaConfig
from lexigram.events.sagas.errors import NonRetryableError
from lexigram.events.sagas.manager import SagaManager
from tests.support.helpers import Script, saga_class


def build(name: str, value: object) -> SagaConfig:
    """Build a config with one setting given by name."""
    options: dict[str, Any] = {name: value}
    return SagaConfig(**options)


def test_upstream_defaults() -> None:
    """The upstream fields keep their defaults."""
    config = SagaConfig()
    assert config.default_timeout_seconds == 300.0
    assert config.max_retries_per_step == 3
    assert config.retry_delay_seconds == 1.0
    assert config.enable_compensation is True
    assert config.persist_state is True
    assert config.cleanup_completed_after_hours == 24


def test_added_defaults() -> None:
    """The settings the spec adds have their documented defaults."""
    config = SagaConfig()
    assert config.backoff_multiplier == 2.0
    assert config.max_retry_delay == 60.0
    assert config.jitter == 0.1
    assert config.lease_seconds == 30
    assert config.max_transitions == 1000
    assert config.max_recovery_attempts == 5
    assert config.shutdown_timeout > 0


def test_every_spec_field_exists() -> None:
    """Every field SPEC section 4 names is a setting."""
    expected = {
        "default_timeout_seconds",
        "max_retries_per_step",
        "retry_delay_seconds",
        "enable_compensation",
        "persist_state",
        "cleanup_completed_after_hours",
        "backoff_multiplier",
        "max_retry_delay",
        "jitter",
        "non_retryable_exceptions",
        "shutdown_timeout",
        "lease_seconds",
        "max_transitions",
        "max_recovery_attempts",
    }
    assert expected <= set(SagaConfig.field_names())


def test_default_non_retryable_exceptions() -> None:
    """By default NonRetryableError and the programming-error types are not retried."""
    assert set(SagaConfig().non_retryable_exceptions) == {
        NonRetryableError,
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
        NotImplementedError,
    }
    assert SagaConfig().non_retryable_exceptions == DEFAULT_NON_RETRYABLE


def test_config_is_reexported() -> None:
    """``lexigram.events.config.SagaConfig`` is the same class."""
    assert ReexportedConfig is SagaConfig


def test_config_is_frozen() -> None:
    """A config cannot be changed after creation."""
    config = SagaConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_retries_per_step = 5  # type: ignore[misc]


def test_settings_are_keyword_only() -> None:
    """Positional arguments are refused."""
    with pytest.raises(TypeError):
        SagaConfig(10.0)  # type: ignore[call-arg]


def test_zero_values_allowed_where_meaningful() -> None:
    """Zero retries, zero delays, zero jitter and 0 cleanup hours are valid."""
    config = SagaConfig(
        max_retries_per_step=0,
        retry_delay_seconds=0,
        max_retry_delay=0,
        jitter=0,
        cleanup_completed_after_hours=0,
        shutdown_timeout=0,
        max_recovery_attempts=0,
    )
    assert config.max_retries_per_step == 0


NEGATIVE = [
    "default_timeout_seconds",
    "max_retries_per_step",
    "retry_delay_seconds",
    "cleanup_completed_after_hours",
    "max_retry_delay",
    "jitter",
    "shutdown_timeout",
    "lease_seconds",
    "max_transitions",
    "max_recovery_attempts",
]


@pytest.mark.parametrize("name", NEGATIVE)
def test_negative_value_is_rejected_naming_the_field(name: str) -> None:
    """A negative setting raises ValueError naming the field."""
    with pytest.raises(ValueError, match=name):
        build(name, -1)


@pytest.mark.parametrize(
    "name", ["default_timeout_seconds", "lease_seconds", "max_transitions", "backoff_multiplier"]
)
def test_zero_is_rejected_where_positive_is_needed(name: str) -> None:
    """Zero raises ValueError naming the field where a positive value is needed."""
    with pytest.raises(ValueError, match=name):
        build(name, 0)


@pytest.mark.parametrize(
    "name",
    [
        "default_timeout_seconds",
        "retry_delay_seconds",
        "max_retry_delay",
        "lease_seconds",
        "shutdown_timeout",
        "jitter",
        "cleanup_completed_after_hours",
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_value_is_rejected(name: str, value: float) -> None:
    """NaN and infinity raise ValueError naming the field."""
    with pytest.raises(ValueError, match=name):
        build(name, value)


@pytest.mark.parametrize(
    "name",
    [
        "default_timeout_seconds",
        "max_retries_per_step",
        "retry_delay_seconds",
        "lease_seconds",
        "max_transitions",
        "max_recovery_attempts",
    ],
)
def test_bool_is_not_a_number(name: str) -> None:
    """A bool where a number is expected raises TypeError naming the field."""
    with pytest.raises(TypeError, match=name):
        build(name, True)


@pytest.mark.parametrize("name", ["max_retries_per_step", "max_transitions"])
def test_count_must_be_an_int(name: str) -> None:
    """A float count raises TypeError naming the field."""
    with pytest.raises(TypeError, match=name):
        build(name, 2.5)


@pytest.mark.parametrize("name", ["retry_delay_seconds", "lease_seconds"])
def test_string_seconds_are_rejected(name: str) -> None:
    """A string where seconds are expected raises TypeError naming the field."""
    with pytest.raises(TypeError, match=name):
        build(name, "1")


def test_backoff_multiplier_below_one_is_rejected() -> None:
    """A multiplier that would shrink delays is refused."""
    with pytest.raises(ValueError, match="backoff_multiplier"):
        SagaConfig(backoff_multiplier=0.5)


def test_jitter_above_one_is_rejected() -> None:
    """Jitter is a fraction between 0 and 1."""
    with pytest.raises(ValueError, match="jitter"):
        SagaConfig(jitter=1.5)


@pytest.mark.parametrize("name", ["enable_compensation", "persist_state"])
def test_boolean_settings_must_be_bool(name: str) -> None:
    """A non-bool flag raises TypeError naming the field."""
    with pytest.raises(TypeError, match=name):
        build(name, 1)


def test_non_retryable_exceptions_must_be_exception_classes() -> None:
    """Anything but a tuple of exception classes is refused."""
    with pytest.raises(TypeError, match="non_retryable_exceptions"):
        SagaConfig(non_retryable_exceptions=(ValueError, "KeyError"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non_retryable_exceptions"):
        SagaConfig(non_retryable_exceptions=[ValueError])  # type: ignore[arg-type]


def test_non_retryable_exceptions_are_configurable() -> None:
    """A custom tuple replaces the defaults."""
    config = SagaConfig(non_retryable_exceptions=(ConnectionError,))
    assert config.non_retryable_exceptions == (ConnectionError,)


def test_field_names_are_in_declaration_order() -> None:
    """``field_names`` lists every setting in declaration order."""
    assert SagaConfig.field_names() == tuple(f.name for f in dataclasses.fields(SagaConfig))


@pytest.mark.parametrize(
    "field", ["default_timeout_seconds", "lease_seconds", "shutdown_timeout", "max_retry_delay"]
)
def test_durations_beyond_a_century_are_refused_naming_the_field(field: str) -> None:
    """``1e15`` seconds would overflow a date or a timer later: refused now, named."""
    with pytest.raises(ValueError, match=field):
        SagaConfig(**{field: 1e15})  # type: ignore[arg-type]


def test_cleanup_age_beyond_a_century_is_refused() -> None:
    """``cleanup_completed_after_hours`` is bounded the same way."""
    with pytest.raises(ValueError, match="cleanup_completed_after_hours"):
        SagaConfig(cleanup_completed_after_hours=1e12)


async def test_longest_accepted_deadline_works() -> None:
    """The largest accepted deadline starts a saga without overflowing anything."""
    manager = SagaManager(config=SagaConfig(default_timeout_seconds=MAX_SECONDS))
    manager.register(saga_class(Script()))
    record = await manager.execute("scripted", timeout=5)
    assert record.status.value == "completed"
    await manager.close()
