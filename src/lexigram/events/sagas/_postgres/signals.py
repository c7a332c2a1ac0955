"""``PostgresSagaStore``'s durable waits in SQL: signals, wake-ups, and deleting signals.

A signal is a row of ``<table>_signals``, apart from the saga's row, so it can arrive
while a worker holds the saga without touching its version or lease. ``send_signal`` is one
transaction of two statements (``sql.Statements.take_signal_seq``, then
``insert_signal``): the first locks the saga's row, takes the next ``seq`` and makes a saga
parked for this signal due; the second stores the signal unless its id is stored already.
The unique key on ``(saga_id, signal_id)`` is what finds a duplicate, whatever commits
around it. A duplicate or a finished saga rolls the transaction back, so nothing is stored,
no ``seq`` is spent and no worker is woken.

A saga's signals are deleted in the transaction that deletes the saga, by a statement
that runs after the saga's row is locked and gone: a sender holding the lock before
committed its signal (which that statement sees), and one coming after finds no saga.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lexigram.events.sagas._postgres.listener import WorkSignal
from lexigram.events.sagas._postgres.rows import check_text
from lexigram.events.sagas._postgres.runner import StatementRunner
from lexigram.events.sagas._postgres.sql import Statements
from lexigram.events.sagas.codec import loads_json, signal_payload_json
from lexigram.events.sagas.errors import (
    CorruptRecordError,
    SagaFinishedError,
    SagaNotFoundError,
)
from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaSignal

__all__ = ["delete_saga", "delete_terminal", "next_signal", "send_signal", "wake"]


@dataclass(frozen=True, slots=True)
class _Sent:
    """What one ``send_signal`` transaction found (it committed only if ``stored``)."""

    found: bool
    stored: bool = False
    status: str = ""
    notified: bool = False


class _Undo(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Rolls the signal's transaction back (a duplicate, or a finished saga)."""

    def __init__(self, sent: _Sent) -> None:
        super().__init__()
        self.sent = sent


async def send_signal(
    db: StatementRunner,
    sql: Statements,
    signal: WorkSignal,
    saga_id: str,
    name: str,
    payload: dict[str, Any],
    signal_id: str,
) -> bool:
    """Store a signal for a live saga; ``False`` when ``signal_id`` was stored before.

    Raises:
        TypeError: ``saga_id``, ``name`` or ``signal_id`` is not a str.
        ValueError: ``name`` or ``signal_id`` holds NUL or a lone surrogate.
        SagaDataError: the payload is not a JSON object a store can hold.
        SagaNotFoundError: no such saga.
        SagaFinishedError: the saga is terminal.
    """
    check_text(saga_id, "saga_id")
    check_text(name, "name", stored=True)
    check_text(signal_id, "signal_id", stored=True)
    text = signal_payload_json(payload)  # refused before anything is sent
    timeout = db.timeout

    async def send(conn: Any) -> _Sent:
        try:
            async with conn.transaction():
                sent = await _store(conn, sql, saga_id, name, text, signal_id, timeout)
                _undo_unless_stored(sent)
                return sent
        except _Undo as undo:
            return undo.sent

    listening = signal.listening
    sent = await db.run(send, op="send_signal", saga_id=saga_id)
    if not sent.found:
        raise SagaNotFoundError.for_id(saga_id)
    if not sent.stored:
        return False
    if sent.status in TERMINAL_SAGA_STATUSES:
        raise SagaFinishedError.for_signal(saga_id, sent.status, name)
    if sent.notified and not listening:
        signal.wake()
    return True


async def _store(
    conn: Any,
    sql: Statements,
    saga_id: str,
    name: str,
    payload: str,
    signal_id: str,
    timeout: float | None,
) -> _Sent:
    """Lock the saga, take its next ``seq`` and insert the signal (in the caller's transaction)."""
    row = await conn.fetchrow(sql.take_signal_seq, saga_id, name, timeout=timeout)
    if row is None:
        return _Sent(found=False)
    stored = await conn.fetchval(
        sql.insert_signal, saga_id, row["signal_seq"], name, signal_id, payload, timeout=timeout
    )
    return _Sent(
        found=True, stored=stored is not None, status=row["status"], notified=row["notified"]
    )


def _undo_unless_stored(sent: _Sent) -> None:
    """Roll back unless the signal is new and its saga live (a duplicate is told first)."""
    if not (sent.found and sent.stored) or sent.status in TERMINAL_SAGA_STATUSES:
        raise _Undo(sent)


async def next_signal(
    db: StatementRunner, sql: Statements, saga_id: str, name: str, after: int
) -> SagaSignal | None:
    """The saga's first signal ``name`` whose ``seq`` is above ``after``, if any.

    Raises:
        TypeError: ``saga_id`` or ``name`` is not a str, or ``after`` not an int.
        CorruptRecordError: the signal's stored payload is not a JSON object.
    """
    check_text(saga_id, "saga_id")
    check_text(name, "name")
    if isinstance(after, bool) or not isinstance(after, int):
        raise TypeError(f"after must be an int, got {type(after).__name__}")
    row = await db.query(
        "fetchrow",
        sql.next_signal,
        saga_id,
        name,
        after,
        op="next_signal",
        saga_id=saga_id,
        idempotent=True,
    )
    if row is None:
        return None
    try:
        payload = loads_json(row["payload"])
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise CorruptRecordError(
            f"the payload of signal {row['seq']} is not a JSON object",
            saga_id=saga_id,
            field="signal.payload",
        )
    return SagaSignal(row["seq"], name, row["signal_id"], payload, row["sent_at"])


async def wake(db: StatementRunner, sql: Statements, signal: WorkSignal, saga_id: str) -> bool:
    """Make a free, live saga due now, waking waiting workers; return whether it was.

    Raises:
        TypeError: ``saga_id`` is not a str.
    """
    check_text(saga_id, "saga_id")
    listening = signal.listening
    row = await db.query("fetchrow", sql.wake, saga_id, op="wake", saga_id=saga_id, idempotent=True)
    if row is None:
        return False
    if row["notified"] and not listening:
        signal.wake()
    return True


async def delete_saga(db: StatementRunner, sql: Statements, saga_id: str) -> bool:
    """Delete the saga and its signals in one transaction; return whether it existed."""
    timeout = db.timeout

    async def delete(conn: Any) -> bool:
        async with conn.transaction():
            found = await conn.fetchval(sql.delete, saga_id, timeout=timeout)
            await conn.execute(sql.delete_signals, [saga_id], timeout=timeout)
        return found is not None

    return await db.run(delete, op="delete", saga_id=saga_id)


async def delete_terminal(
    db: StatementRunner, sql: Statements, before: datetime, limit: int
) -> int:
    """Delete up to ``limit`` terminal sagas completed before ``before``, and their signals."""
    if limit <= 0:
        return 0
    timeout = db.timeout

    async def delete(conn: Any) -> int:
        async with conn.transaction():
            rows = await conn.fetch(sql.delete_terminal, before, limit, timeout=timeout)
            if rows:
                ids = [row["saga_id"] for row in rows]
                await conn.execute(sql.delete_signals, ids, timeout=timeout)
        return len(rows)

    return await db.run(delete, op="delete_terminal")
