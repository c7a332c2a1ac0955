"""``SQLiteSagaStore``'s durable waits: ``send_signal``, ``next_signal`` and ``wake``.

Signals live in ``<table>_signals`` (see ``sql``), apart from the saga rows, so a signal
may arrive while a worker holds the saga: neither its version nor its lease changes. The
only write to the saga row is ``not_before_us`` (set to now), which makes a free saga
parked for that signal due; ``wake`` makes the same write for any free live saga. Waiters
of this store wake at once, those of other processes through ``data_version`` (``watch``).

:class:`SignalMethods` holds the store's public methods (mixed into ``SQLiteSagaStore``);
the functions below it run on the store's thread with the connection as first argument.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from lexigram.events.sagas._sqlite import checks
from lexigram.events.sagas._sqlite.ops import to_us
from lexigram.events.sagas._sqlite.sql import Statements
from lexigram.events.sagas._sqlite.watch import Sleepers
from lexigram.events.sagas.codec import loads_json, parse_time, signal_payload_json
from lexigram.events.sagas.errors import (
    CorruptRecordError,
    SagaFinishedError,
    SagaNotFoundError,
)
from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaSignal

__all__ = ["SignalMethods", "next_signal", "send_signal", "wake"]

_TERMINAL: Final = frozenset(status.value for status in TERMINAL_SAGA_STATUSES)


class SignalMethods:
    """The durable-wait methods of ``SQLiteSagaStore`` (a mixin: the store is the rest).

    The attributes below are the store's; they are declared here for the type checker.
    """

    _sql: Statements
    _clock: Callable[[], datetime]
    _sleepers: Sleepers

    def _submit(self, fn: Callable[..., Any], *args: Any, write: bool) -> Any:
        raise NotImplementedError  # SQLiteSagaStore's: queue fn to the store's thread

    async def send_signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        """Store a signal for the saga; return ``False`` if ``signal_id`` was stored before.

        One write transaction looks for ``signal_id`` among the saga's signals, reads the
        saga's status, appends the signal with the next ``seq`` (commit order) and the
        store's time, and, when the saga is free and parked for this signal, sets its
        ``not_before`` to now and wakes waiters. The version, the lease and the stored
        document stay as they are. The payload is checked and encoded first.

        Raises:
            TypeError: ``saga_id``, ``name`` or ``signal_id`` is not a str.
            SagaNotFoundError: no such saga.
            SagaFinishedError: the saga is terminal (and never had this signal).
            SagaDataError: the payload is not a JSON object a store can hold (nothing
                was written).
        """
        text = signal_payload_json(payload)
        stored, woke = await self._submit(
            send_signal,
            self._sql,
            self._clock,
            checks.text("saga_id", saga_id),
            checks.text("name", name),
            checks.text("signal_id", signal_id),
            text,
            write=True,
        )
        if woke and self._sleepers:
            self._sleepers.wake()
        sent: bool = stored
        return sent

    async def next_signal(self, saga_id: str, name: str, after: int) -> SagaSignal | None:
        """Return the saga's first signal ``name`` whose ``seq`` is above ``after``.

        One indexed read; the payload is decoded afresh on every call.

        Raises:
            TypeError: ``saga_id`` or ``name`` is not a str, or ``after`` not an int.
            CorruptRecordError: the stored signal cannot be read.
        """
        if isinstance(after, bool) or not isinstance(after, int):
            raise TypeError(f"after must be an int, got {type(after).__name__}")
        signal: SagaSignal | None = await self._submit(
            next_signal,
            self._sql,
            checks.text("saga_id", saga_id),
            checks.text("name", name),
            after,
            write=False,
        )
        return signal

    async def wake(self, saga_id: str) -> bool:
        """Make a free, live saga due now (``not_before`` = now); return whether it was.

        One ``UPDATE`` of ``not_before_us`` (the store's clock): the version, the lease and
        the document stay. Waiters of this store wake at once, those of other processes at
        their next poll.

        Raises:
            TypeError: ``saga_id`` is not a str.
        """
        woke: bool = await self._submit(
            wake, self._sql, self._clock, checks.text("saga_id", saga_id), write=True
        )
        if woke and self._sleepers:
            self._sleepers.wake()
        return woke


# ---------------------------------------------------------------------- thread side


def send_signal(
    conn: sqlite3.Connection,
    sql: Statements,
    clock: Callable[[], datetime],
    saga_id: str,
    name: str,
    signal_id: str,
    payload: str,
) -> tuple[bool, bool]:
    """Store one signal inside the write transaction; return (stored, saga made due).

    A duplicate ``signal_id`` is reported before the saga's status is looked at (a
    sender's retry after the saga finished is no error). ``seq`` is one more than the
    saga's highest: the store's single writer and SQLite's write lock make that the
    commit order, across processes too.

    Raises:
        SagaNotFoundError: no such saga.
        SagaFinishedError: the saga is terminal.
    """
    if conn.execute(sql.signal_sent, (saga_id, signal_id)).fetchone() is not None:
        return False, False
    row = conn.execute(sql.status_of, (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFoundError.for_id(saga_id)
    if row[0] in _TERMINAL:
        raise SagaFinishedError.for_signal(saga_id, row[0], name)
    now = to_us(clock())
    conn.execute(
        sql.insert_signal,
        {"saga_id": saga_id, "name": name, "signal_id": signal_id, "payload": payload, "now": now},
    )
    woke = conn.execute(sql.signal_wake, (now, saga_id, name)).rowcount == 1
    return True, woke


def next_signal(
    conn: sqlite3.Connection, sql: Statements, saga_id: str, name: str, after: int
) -> SagaSignal | None:
    """The saga's first signal ``name`` with ``seq`` above ``after``, or ``None``.

    Raises:
        CorruptRecordError: the row's payload is not a JSON object, or a column has the
            wrong type (naming the saga and the column).
    """
    row = conn.execute(sql.next_signal, (saga_id, name, after)).fetchone()
    if row is None:
        return None
    seq, signal_id, text, sent_at_us = row
    try:
        payload = loads_json(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise CorruptRecordError(
            "stored signal payload is not a JSON object", saga_id=saga_id, field="payload"
        )
    sent_at = parse_time(sent_at_us, "sent_at_us", saga_id)  # raises on a non-integer
    for field, value, kind in (("seq", seq, int), ("signal_id", signal_id, str)):
        if not isinstance(value, kind):
            raise CorruptRecordError(
                f"signal column '{field}' has the wrong type", saga_id=saga_id, field=field
            )
    if sent_at is None:
        raise CorruptRecordError(
            "signal column 'sent_at_us' is NULL", saga_id=saga_id, field="sent_at_us"
        )
    return SagaSignal(seq, name, signal_id, payload, sent_at)


def wake(
    conn: sqlite3.Connection, sql: Statements, clock: Callable[[], datetime], saga_id: str
) -> bool:
    """Set a free, live saga's ``not_before_us`` to now; return whether there was one."""
    return conn.execute(sql.wake, (to_us(clock()), saga_id)).rowcount == 1
