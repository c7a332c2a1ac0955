"""Saga lifecycle events, published on the manager's event bus when one is configured.

Every event carries the saga's id, name and correlation id; step events also name the
step. A failing bus never breaks a saga: publishing errors are logged and ignored.
"""

from __future__ import annotations

from datetime import datetime

from lexigram.events._domain import DomainEvent

__all__ = [
    "SagaCancelRequested",
    "SagaCompensated",
    "SagaCompensating",
    "SagaCompleted",
    "SagaEvent",
    "SagaFailed",
    "SagaResumed",
    "SagaStarted",
    "SagaStepCompensated",
    "SagaStepCompleted",
    "SagaStepFailed",
    "SagaStepStarted",
    "SagaWaiting",
]


class SagaEvent(DomainEvent):
    """Base of the saga lifecycle events (subscribe to it to receive all of them).

    Attributes:
        saga_id: The saga instance.
        saga_name: Its registered name.
        correlation_id: Its correlation id (the saga id unless set at ``start()``).
        step_name: The step concerned, for step events (``None`` otherwise).
        worker_id: The worker that published it (the requesting process's manager for
            ``SagaCancelRequested``).
    """

    saga_id: str
    saga_name: str
    correlation_id: str
    step_name: str | None = None
    worker_id: str = ""


class SagaStarted(SagaEvent):
    """A saga's run began for the first time."""


class SagaResumed(SagaEvent):
    """A worker took over a saga another worker (or incarnation) had been running.

    Attributes:
        previous_owner: The worker that held it before (``None`` when it was released).
        recovery_attempts: Takeovers from crashed workers since it last made progress.
    """

    previous_owner: str | None = None
    recovery_attempts: int = 0


class SagaCancelRequested(SagaEvent):
    """Some process asked to cancel the saga (``cancel()``); ``reason`` says why."""

    reason: str = ""


class SagaWaiting(SagaEvent):
    """The saga parked at ``step_name``: it holds no worker until the wait ends.

    Published once the parked state is stored.

    Attributes:
        kind: ``"signal"``, ``"delay"`` or ``"poll"`` (see ``SagaWait``).
        signal: The signal it waits for (``kind == "signal"``).
        until: When the wait ends (the signal's timeout; when a delayed or polling step
            runs), ``None`` for a signal without a timeout.
    """

    kind: str = "signal"
    signal: str | None = None
    until: datetime | None = None


class SagaStepStarted(SagaEvent):
    """An attempt of a step is starting; ``attempt`` counts from 1."""

    attempt: int = 1


class SagaStepCompleted(SagaEvent):
    """A step completed; ``attempt`` is the attempt that succeeded.

    Attributes:
        attempt: The attempt that succeeded.
        duration_seconds: From the visit's first attempt to its completion.
    """

    attempt: int = 1
    duration_seconds: float = 0.0


class SagaStepFailed(SagaEvent):
    """A step attempt failed.

    Attributes:
        attempt: The attempt that failed, from 1.
        error: Why it failed.
        will_retry: Whether another attempt follows.
    """

    attempt: int = 1
    error: str = ""
    will_retry: bool = False


class SagaCompensating(SagaEvent):
    """The saga started undoing its completed steps; ``error`` says why."""

    error: str = ""


class SagaStepCompensated(SagaEvent):
    """A step's compensation completed."""


class SagaCompleted(SagaEvent):
    """The saga completed every step; ``duration_seconds`` since it was stored."""

    duration_seconds: float = 0.0


class SagaCompensated(SagaEvent):
    """The saga failed and every completed step was compensated.

    Attributes:
        error: Why the saga failed.
        duration_seconds: Since the saga was stored.
    """

    error: str = ""
    duration_seconds: float = 0.0


class SagaFailed(SagaEvent):
    """The saga ended ``FAILED`` (a compensation failed, or compensation is disabled).

    Attributes:
        error: Why.
        duration_seconds: Since the saga was stored.
    """

    error: str = ""
    duration_seconds: float = 0.0
