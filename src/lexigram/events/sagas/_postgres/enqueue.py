"""Saving sagas nobody holds: enqueues (plain and transactional) and redrives.

``save_unheld`` is ``PostgresSagaStore.save`` for a record without a lease: its statement
notifies waiting workers, or, for an enqueue right after another, a trailing signal does
(``coalesce.NotifyCoalescer``).

``insert_in`` is ``PostgresSagaStore.save_in``, the transactional enqueue through the
caller's connection.
The insert (and, for a saga without a lease, its ``pg_notify``) runs on the caller's
connection, inside the caller's transaction if one is open: PostgreSQL delivers the
notification at commit and drops it on rollback, so workers are never woken for a saga
that does not exist. Nothing is retried (the transaction is the caller's), and the
caller's connection is never closed here, whatever happens.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lexigram.events.sagas._postgres.coalesce import NotifyCoalescer
from lexigram.events.sagas._postgres.listener import WorkSignal
from lexigram.events.sagas._postgres.rows import UPDATE_ARGUMENTS, save_arguments
from lexigram.events.sagas._postgres.runner import StatementRunner
from lexigram.events.sagas._postgres.sql import Statements
from lexigram.events.sagas.errors import ConcurrencyConflictError
from lexigram.events.sagas.types import SagaRecord

__all__ = ["insert_in", "notify", "save_unheld"]


async def save_unheld(
    db: StatementRunner,
    sql: Statements,
    record: SagaRecord,
    arguments: tuple[Any, ...],
    *,
    signal: WorkSignal,
    coalescer: NotifyCoalescer,
) -> Any:
    """Insert or update ``record`` (no lease); return the row (``None``: version conflict)."""
    if record.version == 0 and not coalescer.notify_inline():
        # An enqueue right after another: a trailing signal covers it.
        row = await db.query("fetchrow", sql.insert, *arguments, op="save", saga_id=record.saga_id)
        if (
            row is not None
            and not record.is_terminal
            and (record.not_before is None or record.not_before <= datetime.now(UTC))
        ):
            coalescer.follow(record.saga_name)
            if not signal.listening:
                signal.wake()
        return row
    statement = sql.enqueue if record.version == 0 else sql.update_free
    if record.version != 0:
        arguments = arguments[:UPDATE_ARGUMENTS]
    listening = signal.listening
    row = await db.query("fetchrow", statement, *arguments, op="save", saga_id=record.saga_id)
    if row is not None and row["notified"] and not listening:
        signal.wake()
    return row


async def notify(db: StatementRunner, channel: str, payload: str) -> None:
    """Send one signal of new work on ``channel`` (its own statement)."""
    await db.query("execute", "SELECT pg_notify($1, $2)", channel, payload, op="notify")


async def insert_in(
    db: StatementRunner, sql: Statements, connection: Any, record: SagaRecord
) -> None:
    """Insert the new ``record`` through ``connection``; set its version to 1.

    Raises:
        TypeError: ``connection`` is not an asyncpg connection, or ``record`` is not a
            ``SagaRecord``.
        ValueError: ``record.version`` is not 0.
        ConcurrencyConflictError: the saga exists.
        SagaDataError: the record holds a value JSON (or UTF-8) cannot store.
        SagaStoreUnavailableError: the server cannot be reached.
        SagaStoreError: another server error, naming its SQLSTATE.
    """
    if not isinstance(record, SagaRecord):
        raise TypeError(f"record must be a SagaRecord, got {type(record).__name__}")
    if not callable(getattr(connection, "fetchrow", None)):
        raise TypeError(
            f"connection must be an asyncpg connection, got {type(connection).__name__}"
        )
    if record.version != 0:
        raise ValueError(
            f"save_in() stores new sagas only: record.version must be 0, got {record.version}"
        )
    arguments = save_arguments(record)
    await db.connection_pool()  # the table exists (and is of this version)
    statement = sql.insert if record.lease_owner is not None else sql.enqueue
    try:
        row = await connection.fetchrow(statement, *arguments)
        actual = (
            None if row is not None else await connection.fetchval(sql.version_of, record.saga_id)
        )
    except Exception as exc:
        error = db.translate(exc, "save_in", record.saga_id)
        if error is exc:
            raise
        raise error from exc
    if row is None:
        raise ConcurrencyConflictError(record.saga_id, expected_version=0, actual_version=actual)
    record.version = 1
    record.lease_expires_at = row["lease_expires_at"]
