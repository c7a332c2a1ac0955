"""A saga's record as a timeline, for people: the command's ``show`` and the web admin.

:func:`timeline` turns a :class:`~lexigram.events.sagas.SagaRecord` (and, when known, its
flow, to list the steps not reached yet) into a :class:`Timeline`: one
:class:`StepLine` per step with its status, attempts, start, duration, error and its
compensation, plus what the saga waits for. :meth:`Timeline.to_json` gives the same as
JSON-ready data (times as ISO 8601 text). :func:`format_duration` and :func:`format_ago`
write times the way both tools show them.

Only names, statuses, times, counts and error texts appear: never context data (only its
keys) nor step outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas.types import SagaRecord, SagaStepRecord, SagaStepStatus, SagaWait

__all__ = [
    "NOT_REACHED",
    "WAITING",
    "StepLine",
    "Timeline",
    "format_ago",
    "format_duration",
    "timeline",
]

WAITING = "waiting"
"""The status shown for the step a parked saga waits at."""

NOT_REACHED = "not reached"
"""The status shown for a step of the flow the saga has not entered."""


@dataclass(frozen=True, slots=True)
class StepLine:
    """One step of a saga, as the tools show it.

    Attributes:
        name: The step's name.
        status: The step's status value, :data:`WAITING` for the step a parked saga waits
            at, or :data:`NOT_REACHED`.
        attempts: Attempts of the current visit that ran to an outcome.
        visits: How many times the flow entered the step.
        started_at: When the current visit began.
        completed_at: When its action completed (or finally failed).
        duration: ``completed_at - started_at`` in seconds, when both are known.
        error: The last attempt's error, when it failed.
        attempt_errors: Every failed attempt's error, oldest first.
        compensation: ``None`` when the compensation never started, else
            ``"compensating"``, ``"compensated"`` or ``"failed"``.
        compensation_attempts: Attempts of the compensation.
        compensation_error: The compensation's last error.
        compensated_at: When the compensation completed.
        parent: The parallel group the step belongs to.
        waiting: What the saga waits for at this step, while parked here.
        signal_seq: The ``seq`` of the signal the step took, if it waits for one.
    """

    name: str
    status: str
    attempts: int = 0
    visits: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration: float | None = None
    error: str | None = None
    attempt_errors: tuple[str, ...] = ()
    compensation: str | None = None
    compensation_attempts: int = 0
    compensation_error: str | None = None
    compensated_at: datetime | None = None
    parent: str | None = None
    waiting: SagaWait | None = None
    signal_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Timeline:
    """A saga as the tools show it: its header, its steps in order, what comes next.

    Attributes:
        saga_id: The saga's id.
        saga_name: Its registered name.
        status: Its status value.
        correlation_id: Its correlation id.
        created_at: When it was stored.
        updated_at: When it was last written.
        completed_at: When it reached a terminal status.
        duration: From ``created_at`` to ``completed_at`` (or ``updated_at`` while it
            runs), in seconds.
        error: Why it did not complete.
        failure_kind: ``record.failure.kind``, when there is a failure.
        failure_step: ``record.failure.step``.
        current_step: The step to run next.
        lease_owner: The worker holding it, if any.
        lease_expires_at: When that worker's lease ends unless renewed.
        deadline_at: When it times out.
        waiting: What it waits for, while parked.
        cancel_requested_at: When a cancel was requested.
        cancel_reason: Why.
        redrives: Operators' redrives out of ``FAILED``.
        recovery_attempts: Takeovers from crashed workers since its last progress.
        steps: The steps it entered, in order.
        upcoming: The flow's steps it has not entered (only when the flow is known).
        data_keys: The keys of its context data (never the values).
    """

    saga_id: str
    saga_name: str
    status: str
    correlation_id: str
    created_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    duration: float | None
    error: str | None
    failure_kind: str | None
    failure_step: str | None
    current_step: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    deadline_at: datetime | None
    waiting: SagaWait | None
    cancel_requested_at: datetime | None
    cancel_reason: str | None
    redrives: int
    recovery_attempts: int
    steps: tuple[StepLine, ...]
    upcoming: tuple[str, ...]
    data_keys: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The timeline as JSON-ready data (times as ISO 8601 text, ``None`` as null)."""
        doc: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if name == "steps":
                value = [_json_fields(step) for step in self.steps]
            doc[name] = _json_value(value)
        return doc


def timeline(record: SagaRecord, flow: Flow | None = None) -> Timeline:
    """Build the timeline of ``record``; with its ``flow``, also the steps not reached."""
    steps = tuple(_line(record, step) for step in record.steps.values())
    upcoming: tuple[str, ...] = ()
    if flow is not None:
        upcoming = tuple(name for name in flow.steps if name not in record.steps)
    end = record.completed_at or record.updated_at
    failure = record.failure
    return Timeline(
        saga_id=record.saga_id,
        saga_name=record.saga_name,
        status=record.status.value,
        correlation_id=record.correlation_id,
        created_at=record.created_at,
        updated_at=record.updated_at,
        completed_at=record.completed_at,
        duration=_seconds(record.created_at, end),
        error=record.error,
        failure_kind=None if failure is None else failure.kind,
        failure_step=None if failure is None else failure.step,
        current_step=record.current_step,
        lease_owner=record.lease_owner,
        lease_expires_at=record.lease_expires_at,
        deadline_at=record.deadline_at,
        waiting=record.waiting,
        cancel_requested_at=record.cancel_requested_at,
        cancel_reason=record.cancel_reason,
        redrives=record.redrives,
        recovery_attempts=record.recovery_attempts,
        steps=steps,
        upcoming=upcoming,
        data_keys=tuple(str(key) for key in record.data),
    )


def _line(record: SagaRecord, step: SagaStepRecord) -> StepLine:
    wait = record.waiting
    parked_here = wait is not None and wait.step == step.step_name and not record.is_terminal
    return StepLine(
        name=step.step_name,
        status=WAITING if parked_here else step.status.value,
        attempts=step.attempts,
        visits=step.visits,
        started_at=step.started_at,
        completed_at=step.completed_at,
        duration=_seconds(step.started_at, step.completed_at),
        error=step.error,
        attempt_errors=tuple(step.attempt_errors),
        compensation=_compensation(step),
        compensation_attempts=step.compensation_attempts,
        compensation_error=step.compensation_error,
        compensated_at=step.compensated_at,
        parent=step.parent,
        waiting=wait if parked_here else None,
        signal_seq=step.signal_seq,
    )


def _compensation(step: SagaStepRecord) -> str | None:
    status = step.status
    if status is SagaStepStatus.COMPENSATED:
        return "compensated"
    if status is SagaStepStatus.COMPENSATING:
        return "compensating"
    if status is SagaStepStatus.FAILED and step.compensation_error is not None:
        return "failed"
    return None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def _json_fields(step: StepLine) -> dict[str, Any]:
    return {name: _json_value(getattr(step, name)) for name in step.__slots__}


def _json_value(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, SagaWait):
        return {
            "step": value.step,
            "kind": value.kind,
            "signal": value.signal,
            "until": _json_value(value.until),
            "since": _json_value(value.since),
        }
    if isinstance(value, tuple):
        return [_json_value(item) for item in value]
    return value


def format_duration(seconds: float | None) -> str:
    """``0.0123`` -> ``"12ms"``, ``75`` -> ``"1m 15s"``, ``93600`` -> ``"1d 2h"``.

    ``None`` (unknown) is ``""``.
    """
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    for size, unit, smaller, smaller_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "m"),
        (60, "m", 1, "s"),
    ):
        if whole >= size:
            rest = (whole % size) // smaller
            return (
                f"{whole // size}{unit} {rest}{smaller_unit}" if rest else f"{whole // size}{unit}"
            )
    return f"{whole}s"  # pragma: no cover - every whole >= 60 is caught above


def format_ago(moment: datetime | None, now: datetime) -> str:
    """``"3m ago"``, ``"in 2h"``, ``"just now"``; ``""`` for none."""
    if moment is None:
        return ""
    delta = (now - moment).total_seconds()
    if abs(delta) < 1:
        return "just now"
    text = format_duration(abs(delta)).split(" ")[0]
    if text.endswith("ms"):
        return "just now"
    if "." in text:  # "12.3s" -> "12s"
        text = text.split(".")[0] + "s"
    return f"{text} ago" if delta > 0 else f"in {text}"
