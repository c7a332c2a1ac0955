"""The human views of ``show`` (a saga's timeline) and ``stats`` (counts by status)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import datetime

from lexigram.events.sagas.ops.cli_tables import (
    Column,
    describe_wait,
    layout,
    one_line,
    render_table,
    stamp,
)
from lexigram.events.sagas.ops.timeline import (
    Timeline,
    format_ago,
    format_duration,
)
from lexigram.events.sagas.types import SagaStatus

__all__ = ["render_stats", "render_timeline"]

_LABEL = 13  # width of the header labels of ``show``

_STEP_COLUMNS = (
    Column("STEP"),
    Column("STATUS"),
    Column("ATTEMPTS", right=True),
    Column("STARTED"),
    Column("DURATION", right=True),
    Column("ERROR", flexible=True),
)

_COMPENSATION_COLUMNS = (
    Column("STEP"),
    Column("COMPENSATION"),
    Column("ATTEMPTS", right=True),
    Column("DONE"),
    Column("ERROR", flexible=True),
)


def render_timeline(line: Timeline, now: datetime, width: int) -> str:
    """The text ``show`` prints: a header, the steps, their compensations, what comes next.

    Errors cut to fit a table are repeated in full, wrapped, under it.
    """
    parts = [_header(line, now, width)]
    errors: list[str] = []
    if line.steps:
        rows = [
            [
                f"  {step.name}" if step.parent else step.name,
                step.status,
                _attempts(step.attempts, step.visits),
                format_ago(step.started_at, now),
                format_duration(step.duration),
                step.error or "",
            ]
            for step in line.steps
        ]
        parts.append(render_table(_STEP_COLUMNS, rows, width=width))
        errors += _cut(_STEP_COLUMNS, rows, width, "")
    for step in line.steps:
        if len(step.attempt_errors) > 1:
            errors += [
                f"{step.name}, attempt {number}: {error}"
                for number, error in enumerate(step.attempt_errors, start=1)
            ]
    compensations = [step for step in line.steps if step.compensation is not None]
    if compensations:
        rows = [
            [
                step.name,
                step.compensation or "",
                str(step.compensation_attempts),
                format_ago(step.compensated_at, now),
                step.compensation_error or "",
            ]
            for step in compensations
        ]
        parts.append(render_table(_COMPENSATION_COLUMNS, rows, width=width))
        errors += _cut(_COMPENSATION_COLUMNS, rows, width, "compensation of ")
    if errors:
        parts.append("\n".join(_wrap("- ", error, width, 2) for error in errors))
    if line.upcoming:
        parts.append(_wrap("not reached: ", ", ".join(line.upcoming), width, 2))
    if not line.steps and not line.upcoming:
        parts.append("no step has run yet")
    return "\n\n".join(parts)


def _cut(columns: tuple[Column, ...], rows: list[list[str]], width: int, prefix: str) -> list[str]:
    """``"<step>: <error>"`` for every row whose error (last column) the table cuts."""
    room = layout(columns, rows, width=width)[-1]
    return [f"{prefix}{row[0].strip()}: {row[-1]}" for row in rows if len(one_line(row[-1])) > room]


def _header(line: Timeline, now: datetime, width: int) -> str:
    live = line.status not in {s.value for s in SagaStatus if s.is_terminal}
    fields: list[tuple[str, str]] = [
        ("saga", line.saga_id),
        ("name", line.saga_name),
        ("status", line.status + (" (parked)" if live and line.waiting is not None else "")),
        ("correlation", line.correlation_id),
        ("created", stamp(line.created_at, now)),
        ("updated", stamp(line.updated_at, now)),
        ("completed", stamp(line.completed_at, now)),
        ("duration", format_duration(line.duration)),
    ]
    if line.error:
        fields.append(("error", line.error))
    if line.failure_kind:
        where = f" at step {line.failure_step!r}" if line.failure_step else ""
        fields.append(("failure", f"{line.failure_kind}{where}"))
    if live:
        fields.append(("next step", line.current_step or ""))
        waits = "" if line.waiting is None else describe_wait(line.waiting, now)
        fields.append(("waits for", waits))
        fields.append(("lease", _lease(line, now)))
        fields.append(("deadline", format_ago(line.deadline_at, now)))
    if line.cancel_requested_at is not None:
        reason = f": {line.cancel_reason}" if line.cancel_reason else ""
        fields.append(("cancel", f"requested {format_ago(line.cancel_requested_at, now)}{reason}"))
    if line.redrives:
        fields.append(("redrives", str(line.redrives)))
    if line.recovery_attempts:
        fields.append(("takeovers", f"{line.recovery_attempts} since its last progress"))
    if line.data_keys:
        fields.append(("data keys", ", ".join(line.data_keys)))
    return "\n".join(
        _wrap(f"{label:<{_LABEL}}", value, width, _LABEL) for label, value in fields if value
    )


def _lease(line: Timeline, now: datetime) -> str:
    if line.lease_owner is None:
        return "none (no worker holds it)"
    expires = format_ago(line.lease_expires_at, now)
    return f"held by {line.lease_owner}" + (f", expires {expires}" if expires else "")


def _attempts(attempts: int, visits: int) -> str:
    return f"{attempts} ({visits} visits)" if visits > 1 else str(attempts)


def _wrap(first: str, text: str, width: int, indent: int) -> str:
    """``first`` then ``text`` wrapped to ``width``, later lines indented by ``indent``."""
    return textwrap.fill(
        one_line(text),
        width=max(width, indent + 20),
        initial_indent=first,
        subsequent_indent=" " * indent,
        break_on_hyphens=False,
    )


def render_stats(counts: Mapping[str, int], saga_name: str | None, width: int) -> str:
    """The table ``stats`` prints: sagas by status, the parked ones, the total."""
    rows = [[status.value, str(counts.get(status.value, 0))] for status in SagaStatus]
    rows.append(["total", str(sum(counts.get(status.value, 0) for status in SagaStatus))])
    table = render_table((Column("STATUS"), Column("SAGAS", right=True)), rows, width=width)
    scope = f"sagas named {saga_name!r}" if saga_name else "all sagas"
    parked = counts.get("waiting", 0)
    return f"{table}\n\n{scope}; {parked} parked (waiting for a signal, a delay or a poll)"
