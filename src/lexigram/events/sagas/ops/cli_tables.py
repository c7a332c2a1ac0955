"""How ``lexigram-sagas`` writes for people: tables that fit the terminal, times, waits.

:func:`render_table` lays rows out in aligned columns no wider than the terminal
(``shutil.get_terminal_size()``, so ``COLUMNS`` is honoured), shortening the flexible
columns first and marking every cut with ``…``. :func:`parse_when` reads the ``--since``
and ``--until`` options. :func:`list_json` is what ``list --json`` prints per saga.
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lexigram.events.sagas.ops.timeline import format_ago
from lexigram.events.sagas.types import SagaRecord, SagaWait

__all__ = [
    "ELLIPSIS",
    "Column",
    "describe_wait",
    "iso",
    "layout",
    "list_json",
    "list_table",
    "one_line",
    "parse_when",
    "render_table",
    "stamp",
    "terminal_width",
    "wait_json",
]

ELLIPSIS = "…"
"""Ends every cell cut to fit."""

_GAP = "  "
_MIN_WIDTH = 8  # a flexible column is never cut below this (or its header)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table.

    Attributes:
        header: Its title.
        flexible: Cut first when the table is too wide (errors, descriptions); the other
            columns (ids, statuses) are cut only when cutting those is not enough.
        right: Align right (counts).
    """

    header: str
    flexible: bool = False
    right: bool = False


def terminal_width() -> int:
    """The width to fit output into (``COLUMNS``, the terminal, else 80)."""
    return max(shutil.get_terminal_size((80, 24)).columns, 20)


def one_line(text: object) -> str:
    """``text`` as one line: runs of whitespace (newlines included) become one space."""
    return " ".join(str(text).split())


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``…`` when it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return text[: width - 1] + ELLIPSIS


def render_table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], *, width: int | None = None
) -> str:
    """Lay ``rows`` out under ``columns``, fitting ``width`` (the terminal's by default).

    Cells are made one line. When the natural layout is too wide, the widest flexible
    column is narrowed one character at a time (down to 8 characters or its header), then
    the other columns likewise; cut cells end in ``…``. Lines carry no trailing spaces.
    """
    cells = [[one_line(cell) for cell in row] for row in rows]
    widths = layout(columns, cells, width=width)
    lines = [_line(columns, widths, [column.header for column in columns])]
    lines.extend(_line(columns, widths, row) for row in cells)
    return "\n".join(lines)


def layout(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], *, width: int | None = None
) -> list[int]:
    """The width :func:`render_table` gives each column (a cell longer than it is cut)."""
    limit = terminal_width() if width is None else width
    widths = [len(column.header) for column in columns]
    for row in rows:
        widths = [max(w, len(one_line(cell))) for w, cell in zip(widths, row, strict=True)]
    _narrow(columns, widths, limit - len(_GAP) * (len(columns) - 1))
    return widths


def _narrow(columns: Sequence[Column], widths: list[int], room: int) -> None:
    """Narrow ``widths`` in place until they fit ``room`` (or nothing may shrink more)."""
    for flexible in (True, False):
        floors = [
            min(w, max(len(c.header), _MIN_WIDTH if flexible else len(c.header)))
            for c, w in zip(columns, widths, strict=True)
        ]
        excess = sum(widths) - room
        while excess > 0:
            candidates = [
                i
                for i, column in enumerate(columns)
                if column.flexible == flexible and widths[i] > floors[i]
            ]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1


def _line(columns: Sequence[Column], widths: Sequence[int], row: Sequence[str]) -> str:
    parts = []
    for column, width, cell in zip(columns, widths, row, strict=True):
        text = clip(cell, width)
        parts.append(text.rjust(width) if column.right else text.ljust(width))
    return _GAP.join(parts).rstrip()


def parse_when(text: str) -> datetime:
    """Read ``--since``/``--until``: an ISO 8601 time, or an age meaning "that long ago".

    Ages are a number and a unit: ``90s``, ``15m``, ``2h``, ``3d``, ``1w`` (``1h30m``
    too). A time without a timezone is UTC.

    Raises:
        argparse.ArgumentTypeError: ``text`` is neither.
    """
    compact = text.strip().lower().replace(" ", "")
    if compact and _AGE.sub("", compact) == "":
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _AGE.findall(compact))
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time (2024-05-01, 2024-05-01T12:00Z) nor an age "
            "(90s, 15m, 2h, 3d, 1w)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str | None:
    """``moment`` as ISO 8601 text (``None`` stays ``None``)."""
    return None if moment is None else moment.isoformat()


def stamp(moment: datetime | None, now: datetime) -> str:
    """``"3m ago (2026-05-01 12:00:03 UTC)"``; ``""`` for none."""
    if moment is None:
        return ""
    absolute = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{format_ago(moment, now)} ({absolute})"


def describe_wait(wait: SagaWait, now: datetime) -> str:
    """What a parked saga waits for, in words: ``"signal 'approval' (until in 23h)"``."""
    if wait.kind == "signal":
        what = f"signal {wait.signal!r}"
        until = "no timeout" if wait.until is None else f"until {format_ago(wait.until, now)}"
    elif wait.kind == "delay":
        what, until = "a delay", f"runs {format_ago(wait.until, now)}"
    else:
        what, until = "its next poll", f"runs {format_ago(wait.until, now)}"
    return f"{what} at step {wait.step!r} ({until})"


def wait_json(wait: SagaWait | None) -> dict[str, Any] | None:
    """A wait as JSON-ready data."""
    if wait is None:
        return None
    return {
        "step": wait.step,
        "kind": wait.kind,
        "signal": wait.signal,
        "until": iso(wait.until),
        "since": iso(wait.since),
    }


_LIST_COLUMNS = (
    Column("ID"),
    Column("NAME"),
    Column("STATUS"),
    Column("STEP"),
    Column("CREATED"),
    Column("UPDATED"),
    Column("DETAIL", flexible=True),
)


def list_table(records: Sequence[SagaRecord], now: datetime, width: int | None = None) -> str:
    """The table ``list`` prints: one saga a line, newest first."""
    rows = [
        [
            record.saga_id,
            record.saga_name,
            record.status.value,
            "" if record.is_terminal else record.current_step or "",
            format_ago(record.created_at, now),
            format_ago(record.updated_at, now),
            _detail(record, now),
        ]
        for record in records
    ]
    return render_table(_LIST_COLUMNS, rows, width=width)


def _detail(record: SagaRecord, now: datetime) -> str:
    notes = []
    if record.cancel_requested_at is not None and not record.is_terminal:
        notes.append(f"cancel requested {format_ago(record.cancel_requested_at, now)}")
    if record.waiting is not None and not record.is_terminal:
        notes.append("waits for " + describe_wait(record.waiting, now))
    if record.error:
        notes.append(record.error)
    return "; ".join(notes)


def list_json(record: SagaRecord) -> dict[str, Any]:
    """One saga as ``list --json`` prints it (times as ISO 8601 text)."""
    return {
        "saga_id": record.saga_id,
        "saga_name": record.saga_name,
        "status": record.status.value,
        "correlation_id": record.correlation_id,
        "current_step": record.current_step,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "completed_at": iso(record.completed_at),
        "error": record.error,
        "failure_kind": None if record.failure is None else record.failure.kind,
        "waiting": wait_json(record.waiting),
        "lease_owner": record.lease_owner,
        "cancel_requested_at": iso(record.cancel_requested_at),
        "redrives": record.redrives,
    }
