"""The operations ``SQLiteSagaStore`` runs on its worker thread, and their conversions.

The SQL text and the row layout are in ``sql``. For ``not_before`` and the lease and
cancel fields the columns are the truth: :func:`to_record` decodes the document and
overlays them. The signal operations are in ``signals``.

``saga_name`` and ``status`` must agree with the document: claims and listings filter on
those columns, and would otherwise hand out a saga of another name or status. A row edited
by hand so that they differ is unreadable (``CorruptRecordError``), like a broken document.

Every function here but :func:`save_params` runs on the worker thread with the connection
as first argument.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lexigram.events.sagas._leases import LeasePolicy
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._sqlite.sql import Statements
from lexigram.events.sagas.codec import (
    EPOCH,
    decode_record,
    encode_record,
    format_time,
    parse_time,
)
from lexigram.events.sagas.errors import ConcurrencyConflictError, CorruptRecordError
from lexigram.events.sagas.types import SagaRecord

__all__ = [
    "SINGLE_STATEMENT",
    "cancel_requests",
    "claim",
    "delete",
    "delete_terminal",
    "from_us",
    "load",
    "release",
    "renew",
    "request_cancel",
    "save",
    "save_params",
    "to_record",
    "to_us",
]

logger = logging.getLogger(__name__)


def to_us(value: datetime | None) -> int | None:
    """Return ``value`` as integer microseconds since the epoch (naive means local time)."""
    if value is None:  # most time fields of a running saga: spare the call below
        return None
    if value.tzinfo is None:
        value = value.astimezone(UTC)
    return format_time(value)  # the same microseconds the record document holds


def from_us(value: object, field: str, saga_id: str) -> datetime | None:
    """Inverse of :func:`to_us`, for a column; raise ``CorruptRecordError`` on a bad one."""
    return parse_time(value, field, saga_id)


# ---------------------------------------------------------------------- loop side


def save_params(record: SagaRecord) -> tuple[tuple[Any, ...], tuple[bool, bool]]:
    """Encode ``record`` for ``save`` (on the event loop, before anything is queued).

    Returns the statement's parameters and the kind of save, the key of
    ``Statements.saves``: whether the saga is parked (its statements also take
    ``record.waiting``'s kind and signal) and whether its correlation id is its saga id
    (its statements then take no correlation id). The document is written with the
    version the save will give the record.

    Raises:
        SagaDataError: a value cannot be stored as JSON (nothing was written).
    """
    version = record.version
    record.version = version + 1
    try:
        doc = encode_record(record)  # valid UTF-8, as SQLite's TEXT needs, or SagaDataError
    finally:
        record.version = version
    wait = record.waiting  # copied into columns for send_signal and list(waiting=)
    waits = () if wait is None else (wait.kind, wait.signal)
    saga_id = record.saga_id
    # record.correlation_id, inlined: the property call would cost ~1,000 instructions
    # more per save (callgrind; the whole of save_params is ~118,000).
    correlation_id = record.metadata.get("correlation_id", saga_id)
    own = correlation_id == saga_id or not isinstance(correlation_id, str)
    correlation = () if own else (correlation_id,)
    shared = (
        to_us(record.not_before),
        to_us(record.updated_at),
        to_us(record.completed_at),
        record.lease_owner,
        record.lease_id,
        to_us(record.lease_expires_at),
        record.previous_owner,
        record.recovery_attempts,
        doc,
    )
    if version == 0:  # an insert stores the record's own cancel request (update: never)
        params: tuple[Any, ...] = (
            saga_id,
            record.saga_name,
            record.status.value,
            to_us(record.created_at or EPOCH),  # ordered and filtered as the epoch
            to_us(record.cancel_requested_at),
            record.cancel_reason,
            *waits,
            *shared,
            *correlation,
        )
    else:
        params = (record.status.value, version + 1, *waits, *shared, *correlation, saga_id, version)
    return params, (wait is not None, own)


# ---------------------------------------------------------------------- thread side


def _check(value: object, kind: type, field: str, saga_id: str, *, optional: bool) -> Any:
    if (value is None and optional) or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise CorruptRecordError(f"column '{field}' has the wrong type", saga_id=saga_id, field=field)


def to_record(row: tuple[Any, ...]) -> SagaRecord:
    """Build a record from a row: the document, overlaid with the columns that are truth.

    Those are the lease and cancel columns, and ``not_before_us`` (which ``send_signal``
    and ``wake`` set without rewriting the document).

    Raises:
        CorruptRecordError: the document is not a saga record of this row's id, its name
            or status disagrees with the columns, or a column has the wrong type.
    """
    (
        saga_id,
        name,
        status,
        doc,
        version,
        updated,
        owner,
        lease_id,
        expires,
        previous,
        attempts,
        cancel_at,
        cancel_reason,
        not_before,
    ) = row
    if not isinstance(doc, str | bytes):
        raise CorruptRecordError("the stored document is not text", saga_id=saga_id, field="doc")
    record = decode_record(doc, saga_id=saga_id)
    for field, column, held in (
        ("saga_name", name, record.saga_name),
        ("status", status, record.status.value),
    ):
        if column != held:
            raise CorruptRecordError(
                f"column '{field}' disagrees with the stored document",
                saga_id=saga_id,
                field=field,
            )
    record.version = _check(version, int, "version", saga_id, optional=False)
    record.updated_at = from_us(updated, "updated_at_us", saga_id)
    record.lease_owner = _check(owner, str, "lease_owner", saga_id, optional=True)
    record.lease_id = _check(lease_id, str, "lease_id", saga_id, optional=True)
    record.lease_expires_at = from_us(expires, "lease_expires_at_us", saga_id)
    record.previous_owner = _check(previous, str, "previous_owner", saga_id, optional=True)
    record.recovery_attempts = _check(attempts, int, "recovery_attempts", saga_id, optional=False)
    record.cancel_requested_at = from_us(cancel_at, "cancel_requested_at_us", saga_id)
    record.cancel_reason = _check(cancel_reason, str, "cancel_reason", saga_id, optional=True)
    record.not_before = from_us(not_before, "not_before_us", saga_id)
    return record


def save(
    conn: sqlite3.Connection,
    sql: Statements,
    expected: int,
    params: tuple[Any, ...],
    kind: tuple[bool, bool],
) -> None:
    """Insert (``expected`` 0) or update version ``expected``; raise on a conflict.

    ``params`` and ``kind`` come from :func:`save_params`. An update whose row does not
    hold the record's correlation id yet changes nothing, and is followed by the one that
    writes it (``SaveStatements``): a save changes the row with one statement at most.

    Raises:
        ConcurrencyConflictError: the stored version is not ``expected``.
    """
    statements = sql.saves[kind]
    if not expected:
        if conn.execute(statements.insert, params).rowcount == 1:
            return
        saga_id = params[0]
    else:
        if conn.execute(statements.update, params).rowcount == 1:
            return
        if conn.execute(statements.rewrite, params).rowcount == 1:
            return
        saga_id = params[-2]
    found = conn.execute(sql.version_of, (saga_id,)).fetchone()
    raise ConcurrencyConflictError(
        saga_id, expected_version=expected, actual_version=None if found is None else found[0]
    )


def load(conn: sqlite3.Connection, sql: Statements, saga_id: str) -> SagaRecord | None:
    """Return the saga's record, or ``None``."""
    row = conn.execute(sql.load, (saga_id,)).fetchone()
    return None if row is None else to_record(row)


def delete(conn: sqlite3.Connection, sql: Statements, saga_id: str) -> bool:
    """Delete one saga and its signals; return whether it existed."""
    conn.execute(sql.delete_signals, (saga_id,))
    return conn.execute(sql.delete, (saga_id,)).rowcount == 1


def delete_terminal(conn: sqlite3.Connection, sql: Statements, before: int, limit: int) -> int:
    """Delete up to ``limit`` terminal sagas completed before ``before``, and their signals.

    Returns how many sagas were deleted.
    """
    doomed = [saga_id for (saga_id,) in conn.execute(sql.terminal_ids, (before, limit))]
    if not doomed:
        return 0
    ids = json.dumps(doomed)
    conn.execute(sql.delete_signals_of, (ids,))
    return conn.execute(sql.delete_ids, (ids,)).rowcount


@dataclass(frozen=True, slots=True)
class _Lease:
    """The lease one ``claim`` stamps on every saga it takes."""

    owner: str
    lease_id: str
    now: datetime
    expires: datetime
    now_us: int | None
    expires_us: int | None

    @classmethod
    def starting(cls, owner: str, lease_id: str, now: datetime, seconds: float) -> _Lease:
        """The lease of ``seconds`` from ``now``, its times also in column microseconds."""
        expires = LeasePolicy(seconds).expiry(now)
        return cls(owner, lease_id, now, expires, to_us(now), to_us(expires))


def _take(conn: sqlite3.Connection, sql: Statements, record: SagaRecord, lease: _Lease) -> bool:
    """Stamp ``lease`` on ``record`` and on its row (if still at the version read)."""
    if record.lease_owner is not None:
        record.recovery_attempts += 1
    record.previous_owner = record.lease_owner
    record.lease_owner = lease.owner
    record.lease_id = lease.lease_id
    record.lease_expires_at = lease.expires
    record.updated_at = lease.now
    version = record.version
    record.version = version + 1
    taken = conn.execute(
        sql.take_lease,
        (
            lease.owner,
            lease.lease_id,
            lease.expires_us,
            record.previous_owner,
            record.recovery_attempts,
            lease.now_us,
            version + 1,
            record.saga_id,
            version,
        ),
    )
    return taken.rowcount == 1


def claim(
    conn: sqlite3.Connection,
    sql: Statements,
    clock: Callable[[], datetime],
    owner: str,
    lease_id: str,
    lease_seconds: float,
    names: tuple[str, ...],
    limit: int,
    saga_id: str | None,
    exclude: frozenset[str],
) -> list[SagaRecord]:
    """Take up to ``limit`` claimable sagas, oldest first, inside the write transaction.

    Ids in ``exclude`` are passed over. Rows that cannot be decoded are logged and
    skipped; the query is repeated past them (and past sagas another claim took first)
    until ``limit`` sagas are taken or no candidates are left.
    """
    lease = _Lease.starting(owner, lease_id, clock(), lease_seconds)
    query = sql.select_claimable(len(names), one=saga_id is not None)
    params: dict[str, Any] = {f"n{index}": name for index, name in enumerate(names)}
    params.update(now=lease.now_us, owner=owner, lease_id=lease_id, saga_id=saga_id)
    claimed: list[SagaRecord] = []
    seen: list[str] = []  # skipped and claimed ids (a zero lease could match again)
    while len(claimed) < limit:
        want = limit - len(claimed)
        params.update(want=want, excluded=json.dumps([*exclude, *seen]))
        rows = conn.execute(query, params).fetchall()
        for row in rows:
            key = row[0]
            seen.append(key)
            try:
                record = to_record(row)
            except CorruptRecordError as exc:
                logger.error(  # noqa: TRY400 - no traceback needed
                    "cannot claim saga %s: %s",
                    key,
                    exc,
                    extra=log_fields(saga_id=key, saga_name=row[1], worker_id=owner),
                )
                continue
            if _take(conn, sql, record, lease):
                claimed.append(record)
        if len(rows) < want:
            break
    return claimed


def renew(
    conn: sqlite3.Connection,
    sql: Statements,
    clock: Callable[[], datetime],
    owner: str,
    lease_id: str,
    saga_ids: tuple[str, ...],
    lease_seconds: float,
) -> list[str]:
    """Extend this worker's leases; return the ids it still holds."""
    expires = to_us(LeasePolicy(lease_seconds).expiry(clock()))
    statement = sql.renew
    return [
        saga_id
        for saga_id in saga_ids
        if conn.execute(statement, (expires, saga_id, owner, lease_id)).rowcount == 1
    ]


def release(
    conn: sqlite3.Connection, sql: Statements, saga_id: str, owner: str, lease_id: str
) -> bool:
    """Drop this worker's lease on a saga; return whether it held it."""
    return conn.execute(sql.release, (saga_id, owner, lease_id)).rowcount == 1


def request_cancel(
    conn: sqlite3.Connection,
    sql: Statements,
    clock: Callable[[], datetime],
    saga_id: str,
    reason: str,
) -> tuple[bool, SagaRecord | None]:
    """Store a cancel request on a live saga without one; return (stored, fresh record).

    One ``UPDATE`` that names only the two cancel columns (version, lease and document
    are left as they are), then a read of the row in the same transaction.
    """
    stored = conn.execute(sql.request_cancel, (to_us(clock()), reason, saga_id)).rowcount == 1
    return stored, load(conn, sql, saga_id)


def cancel_requests(
    conn: sqlite3.Connection, sql: Statements, owner: str, lease_id: str
) -> dict[str, str]:
    """The live sagas held by ``owner``/``lease_id`` that were asked to cancel: id -> reason."""
    rows = conn.execute(sql.cancel_requests, (owner, lease_id)).fetchall()
    return {saga_id: reason if isinstance(reason, str) else "" for saga_id, reason in rows}


SINGLE_STATEMENT: frozenset[Callable[..., Any]] = frozenset({save, release})
"""Writes that change data with one statement at most, which SQLite undoes by itself on failure.

(A ``save`` may run a second ``UPDATE``, but only after its first changed nothing.)
"""
