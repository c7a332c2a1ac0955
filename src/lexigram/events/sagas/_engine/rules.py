"""Pure rules of the engine: classifying what a step returned, and retry delays.

No event loop and no I/O here, so each rule can be tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lexigram.events._result import Err, Ok
from lexigram.events.sagas._engine.flow import RetryPolicy
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaStepResult

__all__ = ["describe_error", "interpret_result", "retry_delay"]


def retry_delay(
    attempt: int, policy: RetryPolicy, config: SagaConfig, rand: Callable[[], float]
) -> float:
    """Delay before retrying after failed attempt ``attempt`` (1-based), in seconds.

    ``min(retry_delay * backoff_multiplier ** (attempt - 1), max_retry_delay)`` scaled by a
    random factor in ``[1 - jitter, 1 + jitter]``; ``rand`` returns a float in ``[0, 1)``.
    """
    base = min(
        policy.retry_delay * config.backoff_multiplier ** (attempt - 1), config.max_retry_delay
    )
    return max(0.0, base * (1.0 + config.jitter * (2.0 * rand() - 1.0)))


def describe_error(exc: BaseException) -> str:
    """Render an exception as ``Type: message`` for a step record."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def interpret_result(raw: object, step_name: str) -> tuple[bool, dict[str, Any], str, bool]:
    """Turn whatever a step returned into ``(success, output, error, retryable)``."""
    if raw is None:
        return True, {}, "", False
    if isinstance(raw, SagaStepResult):
        if raw.success:
            output: object = raw.output  # typed as a dict, but callers may pass anything
            if isinstance(output, dict):
                return True, output, "", False
            return False, {}, _wrong_type(step_name, "SagaStepResult.output", output), False
        return False, {}, raw.error or "step reported failure", raw.retryable
    if isinstance(raw, dict):
        return True, raw, "", False
    if isinstance(raw, Ok):
        value = raw.value
        if value is None:
            return True, {}, "", False
        return True, (value if isinstance(value, dict) else {"value": value}), "", False
    if isinstance(raw, Err):
        error = raw.error
        text = describe_error(error) if isinstance(error, BaseException) else str(error)
        return False, {}, text, False
    return False, {}, _wrong_type(step_name, "result", raw), False


def _wrong_type(step_name: str, what: str, value: object) -> str:
    return (
        f"step '{step_name}' returned a {what} of type {type(value).__name__}; expected "
        "SagaStepResult, Ok, Err, dict or None"
    )
