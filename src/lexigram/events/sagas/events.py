"""Saga lifecycle events, published on the manager's event bus when one is configured.

Every event carries the saga's id, name and correlation id; step events also name the
step. A failing bus never breaks a saga: publishing errors are logged and ignored.
"""

from __future__ import annotations

from lexigram.events._domain import DomainEvent

__all__ = [
    "SagaCompensated",
    "SagaCompensating",
    "SagaCompleted",
    "SagaEvent",
    "SagaFailed",
    "SagaStarted",
    "SagaStepCompensated",
    "SagaStepCompleted",
    "SagaStepFailed",
]


class SagaEvent(DomainEvent):
    """Base of the saga lifecycle events (subscribe to it to receive all of them).

    Attributes:
        saga_id: The saga instance.
        saga_name: Its registered name.
        correlation_id: Its correlation id (the saga id unless set at ``start()``).
        step_name: The step concerned, for step events (``None`` otherwise).
    """

    saga_id: str
    saga_name: str
    correlation_id: str
    step_name: str | None = None


class SagaStarted(SagaEvent):
    """A saga's run began for the first time."""


class SagaStepCompleted(SagaEvent):
    """A step completed; ``attempt`` is the attempt that succeeded."""

    attempt: int = 1


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
    """The saga completed every step."""


class SagaCompensated(SagaEvent):
    """The saga failed and every completed step was compensated."""

    error: str = ""


class SagaFailed(SagaEvent):
    """The saga ended ``FAILED`` (a compensation failed, or compensation is disabled)."""

    error: str = ""
