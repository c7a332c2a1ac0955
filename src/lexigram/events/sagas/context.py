"""What a step receives (``SagaContext``) and what it returns (``SagaStepResult``, ``Ok``/``Err``).

A step may return:

- ``SagaStepResult.Ok(output)`` or ``SagaStepResult(success=True, output=...)``;
- ``SagaStepResult.fail(error, retryable=False)`` - a business failure (not retried unless
  ``retryable=True``);
- ``Ok(value)`` / ``Err(error)``;
- a ``dict`` (success with that output) or ``None`` (success, empty output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Self, overload

from lexigram.events._result import Err, Ok, Result

__all__ = ["Err", "Ok", "Result", "SagaContext", "SagaStepResult"]


@dataclass(slots=True)
class SagaContext:
    """The state one saga instance carries from step to step.

    Mapping access reads and writes ``data``: ``ctx["order_id"]``, ``ctx["k"] = v``,
    ``del ctx["k"]``, ``"k" in ctx``, ``ctx.get("k", default)``. ``data`` must stay a JSON
    object: changes a step makes are persisted with the step's completion.

    Attributes:
        saga_id: The saga instance's id.
        saga_name: The registered name of the saga.
        data: The business data (a JSON object).
        step_results: Each completed step's output, by step name.
        metadata: Tracing data; ``metadata["correlation_id"]`` defaults to the saga id.
        step_name: The step (or compensation) running now.
        attempt: The current attempt of that step, from 1.
        idempotency_key: Stable across retries, resumes and processes for one visit of one
            step; a compensation has its own. Pass it to APIs that de-duplicate requests.
        compensating: Whether the running code is a compensation.
        action_completed: In a compensation, whether the step's action completed
            (``False`` only for a ``compensate_failed`` step whose action failed, timed
            out, was cancelled or kept crashing: its side effect may or may not exist).
        signal: In a ``wait_for`` step, the payload of the signal it waited for (a JSON
            object); ``None`` in every other step.
    """

    saga_id: str
    saga_name: str
    data: dict[str, Any] = field(default_factory=dict)
    step_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    step_name: str | None = None
    attempt: int = 0
    compensating: bool = False
    action_completed: bool = True
    signal: dict[str, Any] | None = None
    # The key is made only when a step reads it (most never do): (step, visit, role).
    _key_of: tuple[str, int, bool] | None = field(default=None, init=False, repr=False)
    _key: str | None = field(default=None, init=False, repr=False)

    @property
    def idempotency_key(self) -> str | None:
        """The idempotency key of the running step or compensation (see the class doc)."""
        key = self._key
        if key is None and self._key_of is not None:
            step, visit, compensation = self._key_of
            key = self._key = idempotency_key(self.saga_id, step, visit, compensation=compensation)
        return key

    def use_key(self, step_name: str, visit: int, *, compensation: bool) -> None:
        """Give the context the key of ``step_name``'s visit (the engine calls this)."""
        self._key_of = (step_name, visit, compensation)
        self._key = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    @overload
    def get(self, key: str) -> Any | None: ...
    @overload
    def get(self, key: str, default: Any) -> Any: ...
    def get(self, key: str, default: Any = None) -> Any:
        """Return ``data[key]``, or ``default`` when the key is missing."""
        return self.data.get(key, default)

    @property
    def correlation_id(self) -> str:
        """The correlation id to propagate to downstream services."""
        value = self.metadata.get("correlation_id")
        return value if isinstance(value, str) else self.saga_id

    def for_step(self, step_name: str) -> SagaContext:
        """Return a view sharing this context's dicts, for a step running concurrently."""
        return SagaContext(
            self.saga_id, self.saga_name, self.data, self.step_results, self.metadata, step_name
        )


@dataclass(slots=True)
class SagaStepResult:
    """The outcome of a step or compensation.

    Attributes:
        success: Whether the step succeeded.
        output: The step's output (a JSON object), stored on its record.
        error: Why the step failed: text (an exception given to ``fail()`` is stored as
            ``"Type: message"``).
        retryable: Whether a failed result should be retried like a transient error.
        retry_after_seconds: Set by :meth:`retry_after`: the step is not done yet and
            runs again after that many seconds (the saga parks meanwhile).

    Raises:
        TypeError: ``error`` is neither text, an exception nor ``None`` (a number or a dict
            would not be readable text in the saga's record).
    """

    success: bool
    output: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False
    retry_after_seconds: float | None = None

    def __post_init__(self) -> None:
        error: object = self.error
        if error is None or (type(error) is str and error.isascii()):
            return
        if isinstance(error, BaseException):
            self.error = describe_error(error)
        elif isinstance(error, str):
            self.error = storable_text(str.__str__(error))  # a str subclass: the text only
        else:
            raise TypeError(
                "SagaStepResult error must be a str or an exception, got "
                f"{type(error).__name__}; pass text such as fail('card declined')"
            )

    @classmethod
    def Ok(cls, output: dict[str, Any] | None = None) -> Self:  # noqa: N802 - documented name
        """Return a success carrying ``output``."""
        return cls(success=True, output={} if output is None else output)

    @classmethod
    def fail(cls, error: str | BaseException, *, retryable: bool = False) -> Self:
        """Return a failure; ``retryable=True`` retries it like a transient error.

        Raises:
            TypeError: ``error`` is not text or an exception.
        """
        return cls(success=False, error=error, retryable=retryable)  # type: ignore[arg-type]

    @classmethod
    def retry_after(cls, seconds: float) -> Self:
        """Return "not yet": run the step again after ``seconds`` (a polling step).

        The saga parks meanwhile (no worker holds it); the poll spends no retry. The
        polling is bounded by the step's ``wait_timeout`` (then it fails with
        ``failure.kind == "timeout"``) and by the saga's deadline.

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative, not finite, or more than ten years.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"retry_after seconds must be a number, got {type(seconds).__name__}")
        if not 0 <= seconds <= _TEN_YEARS:  # also refuses NaN
            raise ValueError(
                f"retry_after seconds must be between 0 and {_TEN_YEARS:g}, got {seconds!r}"
            )
        return cls(success=False, error="waiting to run again", retry_after_seconds=float(seconds))


_TEN_YEARS = 10 * 365 * 86400.0


def idempotency_key(saga_id: str, step_name: str, visit: int, *, compensation: bool) -> str:
    """The idempotency key of one visit of a step, or of its compensation.

    ``"<saga_id>:<step>:<role>:<digest>"``: readable, and unique per saga, step, visit and
    role whatever characters ids and names hold (the digest covers all four, so a step
    named ``"charge:compensate"`` never shares a key with ``charge``'s compensation, nor a
    saga ``"a:b"`` with saga ``"a"``). Stable across retries, resumes and processes.
    """
    role = "compensate" if compensation else "step"
    if visit > 1:
        role = f"{role}{visit}"
    # Length-prefixed parts make the hashed text unambiguous whatever the names hold.
    parts = f"{len(saga_id)}:{saga_id}|{len(step_name)}:{step_name}|{role}"
    digest = blake2b(parts.encode("utf-8", "backslashreplace"), digest_size=10).hexdigest()
    return f"{saga_id}:{step_name}:{role}:{digest}"


def describe_error(exc: BaseException) -> str:
    """Render an exception as ``Type: message`` for a step record (always storable text)."""
    text = storable_text(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def storable_text(text: str) -> str:
    """Return ``text`` with anything UTF-8 cannot encode (lone surrogates) escaped.

    Error texts, reasons and names the engine records must never make a write fail: a
    lone surrogate becomes a backslash escape. Other text, ASCII or not, is unchanged.
    """
    if text.isascii():  # O(1) in CPython: the common case pays nothing
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
