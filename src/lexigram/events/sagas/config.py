"""``SagaConfig``: timeouts, retries, compensation, leases and shutdown settings.

One frozen object, passed to a manager or orchestrator. Every field is validated when the
object is built; a bad value raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from lexigram.events.sagas.errors import NonRetryableError

__all__ = ["DEFAULT_NON_RETRYABLE", "MAX_LIST_LIMIT", "MAX_SECONDS", "SagaConfig"]

MAX_SECONDS = 100 * 365.25 * 24 * 3600.0
"""The longest duration any setting accepts: 100 years, in seconds. Longer values would
overflow dates and timers later; they are refused when the setting is made."""

MAX_LIST_LIMIT = 2**31 - 1
"""The largest ``list(limit=...)`` any store accepts (page through more)."""

DEFAULT_NON_RETRYABLE: tuple[type[BaseException], ...] = (
    NonRetryableError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    NotImplementedError,
)
"""Exception types that fail a step at once instead of being retried."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaConfig:
    """Settings shared by every saga a manager or orchestrator runs.

    Attributes:
        default_timeout_seconds: The saga's deadline, counted from ``start()``. When it
            passes, the running step is cancelled and the saga compensates.
        max_retries_per_step: Retries of a transient failure when ``@saga_step`` does not
            set ``max_retries`` (a step is attempted at most ``max_retries + 1`` times).
        retry_delay_seconds: Base delay before the first retry when the step does not set
            ``retry_delay``.
        enable_compensation: When ``False``, a failed saga ends ``FAILED`` without running
            any compensation.
        persist_state: When ``False``, only the start and the end of a saga are stored:
            faster, but a saga interrupted by a crash restarts from its first step.
        cleanup_completed_after_hours: ``cleanup()`` deletes terminal sagas older than
            this; ``0`` keeps them forever.
        backoff_multiplier: Each retry waits this many times longer than the previous one.
        max_retry_delay: Upper bound of one retry delay, in seconds.
        jitter: Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
        non_retryable_exceptions: Raised exception types that are not retried.
        shutdown_timeout: ``close()`` waits this long for running sagas before stopping
            them (without compensating).
        lease_seconds: How long a worker's claim on a running saga lasts without renewal.
        max_transitions: Upper bound of steps one orchestrated run may enter (cycles).
        max_recovery_attempts: Takeovers of a saga that make no progress before the step
            in flight is marked failed as a poison step.
    """

    default_timeout_seconds: float = 300.0
    max_retries_per_step: int = 3
    retry_delay_seconds: float = 1.0
    enable_compensation: bool = True
    persist_state: bool = True
    cleanup_completed_after_hours: float = 24
    backoff_multiplier: float = 2.0
    max_retry_delay: float = 60.0
    jitter: float = 0.1
    non_retryable_exceptions: tuple[type[BaseException], ...] = DEFAULT_NON_RETRYABLE
    shutdown_timeout: float = 30.0
    lease_seconds: float = 30.0
    max_transitions: int = 1000
    max_recovery_attempts: int = 5

    def __post_init__(self) -> None:
        positive = {"default_timeout_seconds", "lease_seconds", "backoff_multiplier"}
        non_negative = {
            "retry_delay_seconds",
            "cleanup_completed_after_hours",
            "max_retry_delay",
            "shutdown_timeout",
        }
        for name in positive | non_negative:
            check_seconds(name, getattr(self, name), allow_zero=name in non_negative)
        if self.cleanup_completed_after_hours * 3600 > MAX_SECONDS:
            raise ValueError(
                "SagaConfig.cleanup_completed_after_hours must be at most "
                f"{MAX_SECONDS / 3600:g}, got {self.cleanup_completed_after_hours!r}"
            )
        for name in ("max_retries_per_step", "max_recovery_attempts"):
            check_count(name, getattr(self, name))
        check_count("max_transitions", self.max_transitions, minimum=1)
        for name in ("enable_compensation", "persist_state"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SagaConfig.{name} must be a bool")
        if self.backoff_multiplier < 1:
            raise ValueError("SagaConfig.backoff_multiplier must be >= 1")
        check_seconds("jitter", self.jitter, allow_zero=True)
        if self.jitter > 1:
            raise ValueError("SagaConfig.jitter must be between 0 and 1")
        exceptions = self.non_retryable_exceptions
        if not isinstance(exceptions, tuple) or not all(
            isinstance(exc, type) and issubclass(exc, BaseException) for exc in exceptions
        ):
            raise TypeError(
                "SagaConfig.non_retryable_exceptions must be a tuple of exception classes"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Return the names of every setting, in declaration order."""
        return tuple(f.name for f in fields(cls))


def check_seconds(name: str, value: object, *, allow_zero: bool, owner: str = "SagaConfig") -> None:
    """Check that ``value`` is a finite number >= 0 (> 0 with ``allow_zero=False``).

    At most :data:`MAX_SECONDS` (100 years), so that no date or timer overflows later.

    Raises:
        TypeError: not a number (naming ``owner.name``).
        ValueError: out of range (naming ``owner.name``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}")
    if value > MAX_SECONDS:
        raise ValueError(
            f"{owner}.{name} must be at most {MAX_SECONDS:g} (100 years), got {value!r}"
        )
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}.{name} must be {bound}, got {value!r}")


def check_count(name: str, value: object, *, minimum: int = 0, owner: str = "SagaConfig") -> None:
    """Check that ``value`` is an int >= ``minimum``.

    Raises:
        TypeError: not an int (naming ``owner.name``).
        ValueError: too small (naming ``owner.name``).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")


def check_list_limit(limit: object) -> int:
    """Validate ``list(limit=...)`` for every store and the manager; return it.

    Raises:
        TypeError: ``limit`` is not an ``int`` (``bool`` is not a count either).
        ValueError: ``limit`` is negative or above :data:`MAX_LIST_LIMIT`.
    """
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if not 0 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 0 and {MAX_LIST_LIMIT}, got {limit}")
    return limit


def check_list_offset(offset: object) -> int:
    """Validate ``list(offset=...)`` for every store and the manager; return it.

    Raises:
        TypeError: ``offset`` is not an ``int``.
        ValueError: ``offset`` is negative or above :data:`MAX_LIST_LIMIT`.
    """
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if not 0 <= offset <= MAX_LIST_LIMIT:
        raise ValueError(f"offset must be between 0 and {MAX_LIST_LIMIT}, got {offset}")
    return offset
