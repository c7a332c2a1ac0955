"""Saga and step statuses, the records a store keeps, and the status transition rules.

Records are plain mutable dataclasses with JSON-friendly fields (``str`` ids, ``StrEnum``
statuses, tz-aware UTC datetimes, dicts of JSON values). A store hands out copies: changing
a loaded record changes nothing until it is saved.

The transition rules are small pure functions so they can be checked without an event loop::

    saga:  PENDING -> RUNNING -> COMPLETED
                             -> COMPENSATING -> COMPENSATED | FAILED
           (PENDING and RUNNING may also fail directly when compensation is disabled)
    step:  PENDING -> RUNNING -> COMPLETED | FAILED
           COMPLETED -> COMPENSATING -> COMPENSATED | FAILED
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from lexigram.events.sagas.errors import CompensationFailedError, SagaError, SagaTimeoutError

__all__ = [
    "FAILURE_KINDS",
    "TERMINAL_SAGA_STATUSES",
    "WAIT_KINDS",
    "FailureKind",
    "SagaFailure",
    "SagaRecord",
    "SagaSignal",
    "SagaStatus",
    "SagaStepRecord",
    "SagaStepStatus",
    "SagaWait",
    "WaitKind",
    "can_transition_saga",
    "can_transition_step",
]


class SagaStatus(StrEnum):
    """Where a saga is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """Whether the status never changes again."""
        return self in TERMINAL_SAGA_STATUSES


class SagaStepStatus(StrEnum):
    """Where one step is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    FAILED = "failed"


TERMINAL_SAGA_STATUSES = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED}
)
"""Statuses a saga never leaves."""

_SAGA_TRANSITIONS: dict[SagaStatus, frozenset[SagaStatus]] = {
    SagaStatus.PENDING: frozenset(
        {SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.COMPLETED, SagaStatus.FAILED}
    ),
    SagaStatus.RUNNING: frozenset(
        {SagaStatus.COMPLETED, SagaStatus.COMPENSATING, SagaStatus.FAILED}
    ),
    SagaStatus.COMPENSATING: frozenset({SagaStatus.COMPENSATED, SagaStatus.FAILED}),
    SagaStatus.COMPLETED: frozenset(),
    SagaStatus.COMPENSATED: frozenset(),
    SagaStatus.FAILED: frozenset(),
}

_STEP_TRANSITIONS: dict[SagaStepStatus, frozenset[SagaStepStatus]] = {
    SagaStepStatus.PENDING: frozenset(
        {SagaStepStatus.RUNNING, SagaStepStatus.COMPLETED, SagaStepStatus.FAILED}
    ),
    SagaStepStatus.RUNNING: frozenset({SagaStepStatus.COMPLETED, SagaStepStatus.FAILED}),
    SagaStepStatus.COMPLETED: frozenset(
        {
            SagaStepStatus.COMPENSATING,
            SagaStepStatus.COMPENSATED,
            SagaStepStatus.FAILED,
            # A step visited again by an orchestrated cycle starts a new visit.
            SagaStepStatus.RUNNING,
        }
    ),
    SagaStepStatus.COMPENSATING: frozenset({SagaStepStatus.COMPENSATED, SagaStepStatus.FAILED}),
    SagaStepStatus.COMPENSATED: frozenset(),
    # A failed step may be entered again by an orchestrated cycle (a new visit), and a
    # ``compensate_failed`` step is compensated although its action failed.
    SagaStepStatus.FAILED: frozenset({SagaStepStatus.RUNNING, SagaStepStatus.COMPENSATING}),
}


def can_transition_saga(current: SagaStatus, new: SagaStatus) -> bool:
    """Return whether a saga may move from ``current`` to ``new`` (staying put is allowed)."""
    return current == new or new in _SAGA_TRANSITIONS[current]


def can_transition_step(current: SagaStepStatus, new: SagaStepStatus) -> bool:
    """Return whether a step may move from ``current`` to ``new`` (staying put is allowed)."""
    return current == new or new in _STEP_TRANSITIONS[current]


def move_saga(record: SagaRecord, new: SagaStatus) -> None:
    """Set ``record.status`` to ``new``, checking the transition table.

    Every status change the engine makes goes through here or :func:`move_step`, except
    two on its hot path, written out after the same check: starting a step's visit and
    completing the running step (``tests/engine/test_steps.py`` holds them to the table).

    Raises:
        ValueError: the table does not allow the move (a bug, never a user error).
    """
    current = record.status
    if current is not new and new not in _SAGA_TRANSITIONS[current]:
        raise ValueError(f"saga '{record.saga_id}' cannot move from {current.value} to {new.value}")
    record.status = new


def move_step(step: SagaStepRecord, new: SagaStepStatus) -> None:
    """Set ``step.status`` to ``new``, checking the transition table.

    Raises:
        ValueError: the table does not allow the move (a bug, never a user error).
    """
    current = step.status
    if current is not new and new not in _STEP_TRANSITIONS[current]:
        raise ValueError(f"step '{step.step_name}' cannot move from {current.value} to {new.value}")
    step.status = new


def redrive_saga(record: SagaRecord, now: datetime) -> None:
    """Put a ``FAILED`` saga back to ``COMPENSATING`` for an operator's ``retry()``.

    The one move out of a terminal status (SPEC section 11), so it does not go through the
    transition table: every step whose compensation gave up (``FAILED`` with a
    ``compensation_error``) is ``COMPLETED`` again with fresh compensation attempts, the
    lease is cleared so any serving worker claims the saga, and ``redrives`` counts it.
    ``error`` and ``failure`` go back to the cause the saga compensated for.

    Raises:
        ValueError: the saga is not ``FAILED``.
    """
    if record.status is not SagaStatus.FAILED:
        raise ValueError(f"saga '{record.saga_id}' is {record.status.value}, not failed")
    if not any(step.compensation_error is not None for step in record.steps.values()):
        raise ValueError(
            f"saga '{record.saga_id}' failed without a compensation that gave up "
            "(compensation disabled): there is nothing to redrive"
        )
    for step in record.steps.values():
        if step.status is SagaStepStatus.FAILED and step.compensation_error is not None:
            if step.completion_seq is not None:  # its action completed (else: it stays
                step.status = SagaStepStatus.COMPLETED  # FAILED, a compensate_failed step)
            step.compensation_attempts = 0
            step.compensation_error = None
            step.compensated_at = None
    failure = record.failure
    if failure is not None and failure.kind == "compensation_failed" and failure.cause:
        record.failure = failure.cause
        record.error = failure.cause.message
    record.status = SagaStatus.COMPENSATING
    record.completed_at = None
    record.updated_at = now
    record.lease_owner = record.lease_id = record.lease_expires_at = None
    record.recovery_attempts = 0
    record.redrives += 1


def finish_saga(record: SagaRecord, status: SagaStatus, now: datetime) -> tuple[Any, ...]:
    """Move ``record`` to the terminal ``status`` for the write that will record it.

    The saga has finished only once that write lands: when the store refuses it, pass the
    returned value to :func:`unfinish_saga`, which puts the record back as it was (the
    move never happened, so it is not a move back).

    Raises:
        ValueError: the table does not allow the move.
    """
    before = (
        record.status,
        record.current_step,
        record.completed_at,
        record.lease_owner,
        record.lease_id,
        record.lease_expires_at,
    )
    move_saga(record, status)
    record.current_step = None
    record.completed_at = now
    record.lease_owner = record.lease_id = record.lease_expires_at = None
    return before


def unfinish_saga(record: SagaRecord, before: tuple[Any, ...]) -> None:
    """Undo :func:`finish_saga` after the store refused the write that recorded it."""
    (
        record.status,
        record.current_step,
        record.completed_at,
        record.lease_owner,
        record.lease_id,
        record.lease_expires_at,
    ) = before


FailureKind = Literal[
    "step_failed",
    "step_error",
    "timeout",
    "deadline",
    "cancelled",
    "crash_loop",
    "transition",
    "compensation_failed",
]
"""Why a saga did not complete; see :class:`SagaFailure`."""

FAILURE_KINDS: frozenset[str] = frozenset(get_args(FailureKind))
"""Every :data:`FailureKind`."""


@dataclass(frozen=True, slots=True)
class SagaFailure:
    """Why a saga did not complete, as data (``record.failure``): never parse ``error``.

    Attributes:
        kind: ``"step_failed"`` (a step returned a failure), ``"step_error"`` (a step
            raised, or stored a value no store can hold), ``"timeout"`` (a step's last
            attempt timed out), ``"deadline"`` (the saga's deadline passed),
            ``"cancelled"`` (``cancel()``), ``"crash_loop"`` (the saga kept crashing its
            worker), ``"transition"`` (an orchestrated transition failed, or the flow
            exceeded ``max_transitions``), ``"compensation_failed"`` (a compensation gave
            up: the saga ended ``FAILED``).
        step: The step concerned, when there is one.
        message: A readable account (the same text as ``record.error``).
        cause: For ``"compensation_failed"``: the failure the saga was compensating for
            (``retry()`` restores it); ``None`` otherwise.
    """

    kind: FailureKind
    step: str | None
    message: str
    cause: SagaFailure | None = None


WaitKind = Literal["signal", "delay", "poll"]
"""What a parked saga waits for; see :class:`SagaWait`."""

WAIT_KINDS: frozenset[str] = frozenset(get_args(WaitKind))
"""Every :data:`WaitKind`."""


@dataclass(frozen=True, slots=True)
class SagaWait:
    """What a parked saga waits for, and until when (``record.waiting``).

    A parked saga holds no lease and no worker memory: a serving worker claims it when
    ``until`` comes (its ``not_before``) or, for a signal, as soon as the signal arrives.

    Attributes:
        step: The step that waits.
        kind: ``"signal"`` (``wait_for=``: a signal named ``signal``), ``"delay"``
            (``delay=``: the step runs at ``until``) or ``"poll"`` (the step returned
            ``SagaStepResult.retry_after``: it runs again at ``until``).
        signal: The signal's name, for ``kind="signal"``.
        until: When the wait ends: the signal's ``wait_timeout`` (``None``: no timeout),
            or when a delayed or polling step runs again.
        since: When this wait began.
    """

    step: str
    kind: WaitKind
    signal: str | None
    until: datetime | None
    since: datetime


@dataclass(frozen=True, slots=True)
class SagaSignal:
    """A signal stored for a saga (``manager.signal``), as a store hands it out.

    Attributes:
        seq: Its position among the saga's signals (1, 2, ...): the order they arrived.
        name: The signal's name (what a step's ``wait_for`` names).
        signal_id: Its id; a second signal with the same id to the same saga is dropped.
        payload: The JSON object sent with it (``ctx.signal`` of the step that takes it).
        sent_at: When the store accepted it.
    """

    seq: int
    name: str
    signal_id: str
    payload: dict[str, Any]
    sent_at: datetime


@dataclass(slots=True)
class SagaStepRecord:
    """The stored state of one step of one saga.

    Attributes:
        step_name: The step's name in its saga definition.
        status: The step's status.
        started_at: When the current visit's first attempt started.
        completed_at: When the step's action completed (or finally failed).
        output: The step's output (a JSON object), also in ``ctx.step_results``.
        error: The error of the last failed attempt, when the step failed.
        attempts: Attempts of the current visit that ran to an outcome.
        attempt_errors: The error of every failed attempt, oldest first.
        compensation_attempts: Attempts of the compensation that ran to an outcome.
        compensation_error: The error of the last failed compensation attempt.
        compensated_at: When the compensation completed.
        completion_seq: Position of this step in the saga's completion order; compensation
            runs in decreasing order of it.
        visits: How many times an orchestrated flow entered this step (1 for sequential
            sagas once the step started).
        parent: The parallel group this step belongs to, if any.
        signal_seq: The ``seq`` of the last signal a visit of this step took (``wait_for``
            steps); a signal with a higher ``seq`` is the next one it can take.
        signal_visit: The visit that took it (a retry of that visit gets the same signal).
    """

    step_name: str
    status: SagaStepStatus = SagaStepStatus.PENDING
    started_at: datetime | None = None
    completed_at: datetime | None = None
    output: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    attempt_errors: list[str] = field(default_factory=list)
    compensation_attempts: int = 0
    compensation_error: str | None = None
    compensated_at: datetime | None = None
    completion_seq: int | None = None
    visits: int = 0
    parent: str | None = None
    signal_seq: int | None = None
    signal_visit: int = 0


@dataclass(slots=True)
class SagaRecord:
    """The stored state of one saga instance.

    Attributes:
        saga_id: Unique id of the instance (a UUID unless the caller chose one).
        saga_name: The registered name of its definition.
        status: The saga's status.
        data: The context data (a JSON object) as of the last persistence point.
        steps: Step records by step name, in the order the steps were first entered.
        created_at: When ``start()`` stored the saga.
        updated_at: When the record was last saved.
        completed_at: When the saga reached a terminal status.
        error: Why the saga did not complete, when it did not.
        version: Optimistic-lock version: 0 before the first save, +1 per store write.
        metadata: Correlation id and other tracing data.
        deadline_at: When the saga times out (``start()`` + ``default_timeout_seconds``).
        current_step: The step to run next (or running now) while the saga moves forward.
        transitions: Steps entered so far (bounded by ``SagaConfig.max_transitions``).
        lease_owner: The worker running the saga, if any.
        lease_id: The owning worker's incarnation (tells a restarted worker from itself).
        lease_expires_at: When the owner's lease ends unless renewed.
        previous_owner: The lease owner before the last takeover by ``recover()``.
        recovery_attempts: Takeovers from crashed workers since the saga last made progress.
        failure: Why the saga did not complete, as data (``None`` while it may still, and
            when it did).
        not_before: No worker claims the saga before this time (``enqueue(not_before=)``).
        cancel_requested_at: When a cancel was requested from any process (store-managed:
            only ``request_cancel`` writes it; ``save`` keeps the stored value).
        cancel_reason: The reason given with that request.
        redrives: How many times an operator's ``retry()`` redrove the saga out of ``FAILED``.
        waiting: What the saga waits for while it is parked (``None`` otherwise); its
            ``not_before`` is then when a worker next looks at it.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus = SagaStatus.PENDING
    data: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, SagaStepRecord] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    version: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    deadline_at: datetime | None = None
    current_step: str | None = None
    transitions: int = 0
    lease_owner: str | None = None
    lease_id: str | None = None
    lease_expires_at: datetime | None = None
    previous_owner: str | None = None
    recovery_attempts: int = 0
    failure: SagaFailure | None = None
    not_before: datetime | None = None
    cancel_requested_at: datetime | None = None
    cancel_reason: str | None = None
    redrives: int = 0
    waiting: SagaWait | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the saga reached a status it never leaves."""
        return self.status in TERMINAL_SAGA_STATUSES

    @property
    def correlation_id(self) -> str:
        """The correlation id (defaults to the saga id)."""
        value = self.metadata.get("correlation_id")
        return value if isinstance(value, str) else self.saga_id

    def raise_for_failure(self) -> None:
        """Raise the error the saga ended with; return if it completed or is still going.

        Lets a caller of ``execute()`` turn an unsuccessful outcome into an exception::

            record = await manager.execute("order_fulfillment", data)
            record.raise_for_failure()

        Raises:
            CompensationFailedError: it ended ``FAILED`` because compensations gave up
                (``steps`` names them).
            SagaTimeoutError: its deadline passed (it was compensated).
            SagaError: it was compensated (or failed with compensation disabled) for any
                other reason; ``record.failure`` says which.
        """
        if self.status not in (SagaStatus.COMPENSATED, SagaStatus.FAILED):
            return
        failure = self.failure
        message = self.error or f"saga '{self.saga_id}' ended {self.status.value}"
        if failure is not None and failure.kind == "compensation_failed":
            failed = [
                name
                for name, step in self.steps.items()
                if step.status is SagaStepStatus.FAILED and step.compensation_error is not None
            ]
            raise CompensationFailedError(message, saga_id=self.saga_id, steps=failed)
        if failure is not None and failure.kind == "deadline":
            raise SagaTimeoutError(message, saga_id=self.saga_id, step_name=failure.step)
        raise SagaError(message, saga_id=self.saga_id)

    def step_statuses(self) -> dict[str, SagaStepStatus]:
        """Return each step's status by name, in execution order."""
        return {name: step.status for name, step in self.steps.items()}
