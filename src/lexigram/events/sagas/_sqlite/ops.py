"""SQL text and the operations ``SQLiteSagaStore`` runs on its worker thread.

Row layout: the JSON document written by ``codec.encode_record`` holds the whole record;
a few fields are copied into columns, for indexes and for the lease operations:

- ``saga_name``, ``created_at_us``: fixed at insert (list and claim order, list by name);
- ``status``, ``completed_at_us``: rewritten by every ``save`` (claims, cleanup);
- ``version``, ``updated_at_us``, ``lease_owner``, ``lease_id``, ``lease_expires_at_us``,
  ``previous_owner``, ``recovery_attempts``: rewritten by ``save`` **and** by ``claim``,
  ``renew`` and ``release``, which change only these columns (not the document).

So for those last seven fields **the columns are the truth**: loading a row decodes the
document and overlays them. This keeps a heartbeat renewal one small ``UPDATE`` of one
column, and a claim free of re-encoding documents. Times in columns are integer
microseconds since the Unix epoch (UTC): exact, and ordered like the times themselves.

``saga_name`` and ``status`` must agree with the document: claims and listings filter on
those columns, and would otherwise hand out a saga of another name or status. A row edited
by hand so that they differ is unreadable (``CorruptRecordError``), like a broken document.

Every function here runs on the worker thread with the connection as first argument.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from lexigram.events.sagas._leases import LeasePolicy
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas.codec import decode_record, encode_record, format_time, parse_time
from lexigram.events.sagas.errors import ConcurrencyConflictError, CorruptRecordError
from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaRecord, SagaStatus

__all__ = [
    "SCHEMA_VERSION",
    "Statements",
    "claim",
    "delete",
    "delete_terminal",
    "from_us",
    "load",
    "release",
    "renew",
    "save",
    "save_params",
    "select",
    "to_record",
    "to_us",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
"""Version of the table layout below; stored in the ``<table>_meta`` table."""


def _status_list(statuses: list[SagaStatus]) -> str:
    return "status IN (" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


# Written out identically in the partial index and in the queries meant to use it: SQLite
# uses a partial index only when the query's WHERE clause contains its condition verbatim.
ACTIVE: Final = _status_list([s for s in SagaStatus if s not in TERMINAL_SAGA_STATUSES])
TERMINAL: Final = _status_list([s for s in SagaStatus if s in TERMINAL_SAGA_STATUSES])

_READ: Final = (
    "saga_id, saga_name, status, doc, version, updated_at_us, lease_owner, lease_id, "
    "lease_expires_at_us, previous_owner, recovery_attempts"
)


def to_us(value: datetime | None) -> int | None:
    """Return ``value`` as integer microseconds since the epoch (naive means local time)."""
    if value is not None and value.tzinfo is None:
        value = value.astimezone(UTC)
    return format_time(value)  # the same microseconds the record document holds


def from_us(value: object, field: str, saga_id: str) -> datetime | None:
    """Inverse of :func:`to_us`, for a column; raise ``CorruptRecordError`` on a bad one."""
    return parse_time(value, field, saga_id)


def _schema(table: str) -> tuple[str, ...]:
    """The ``CREATE`` statements of the saga table and its indexes (idempotent)."""
    t = f'"{table}"'
    return (
        f"""CREATE TABLE IF NOT EXISTS {t} (
            saga_id TEXT PRIMARY KEY NOT NULL,
            saga_name TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at_us INTEGER,
            updated_at_us INTEGER,
            completed_at_us INTEGER,
            lease_owner TEXT,
            lease_id TEXT,
            lease_expires_at_us INTEGER,
            previous_owner TEXT,
            recovery_attempts INTEGER NOT NULL DEFAULT 0,
            doc TEXT NOT NULL
        )""",
        # Claims read only this index: the sagas that are not terminal, oldest first.
        f'CREATE INDEX IF NOT EXISTS "{table}_active" ON {t} (created_at_us, saga_id) '
        f"WHERE {ACTIVE}",
        f'CREATE INDEX IF NOT EXISTS "{table}_created" ON {t} (created_at_us, saga_id)',
        f'CREATE INDEX IF NOT EXISTS "{table}_name" ON {t} (saga_name, created_at_us, saga_id)',
        f'CREATE INDEX IF NOT EXISTS "{table}_completed" ON {t} (completed_at_us) '
        "WHERE completed_at_us IS NOT NULL",
    )


class Statements:
    """Every SQL statement of one table, built once (the table name is validated first)."""

    def __init__(self, table: str) -> None:
        t = f'"{table}"'
        self.table = table
        self.meta = f'"{table}_meta"'
        self.schema = _schema(table)
        self.insert = (
            f"INSERT INTO {t} (saga_id, saga_name, status, version, created_at_us, "
            "updated_at_us, completed_at_us, lease_owner, lease_id, lease_expires_at_us, "
            "previous_owner, recovery_attempts, doc) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (saga_id) DO NOTHING"
        )
        # saga_name and created_at_us are left out on purpose: an UPDATE that does not
        # name an index's columns does not touch that index.
        self.update = (
            f"UPDATE {t} SET status = ?, version = ?, updated_at_us = ?, completed_at_us = ?, "
            "lease_owner = ?, lease_id = ?, lease_expires_at_us = ?, previous_owner = ?, "
            "recovery_attempts = ?, doc = ? WHERE saga_id = ? AND version = ?"
        )
        self.version_of = f"SELECT version FROM {t} WHERE saga_id = ?"
        self.load = f"SELECT {_READ} FROM {t} WHERE saga_id = ?"
        self.delete = f"DELETE FROM {t} WHERE saga_id = ?"
        self.delete_terminal = (
            f"DELETE FROM {t} WHERE saga_id IN (SELECT saga_id FROM {t} "
            f"WHERE completed_at_us < ? AND {TERMINAL} ORDER BY completed_at_us LIMIT ?)"
        )
        self.take_lease = (
            f"UPDATE {t} SET lease_owner = ?, lease_id = ?, lease_expires_at_us = ?, "
            "previous_owner = ?, recovery_attempts = ?, updated_at_us = ?, version = ? "
            "WHERE saga_id = ? AND version = ?"
        )
        self.renew = (
            f"UPDATE {t} SET lease_expires_at_us = ? "
            f"WHERE saga_id = ? AND lease_owner = ? AND lease_id = ? AND {ACTIVE}"
        )
        self.release = (
            f"UPDATE {t} SET lease_owner = NULL, lease_id = NULL, lease_expires_at_us = NULL, "
            "version = version + 1 WHERE saga_id = ? AND lease_owner = ? AND lease_id = ?"
        )
        self._lists: dict[tuple[bool, bool, bool, bool], str] = {}
        self._claims: dict[tuple[int, bool], str] = {}

    def select_list(self, *, by_name: bool, status: SagaStatus | None, limited: bool) -> str:
        """The listing query for this combination of filters (newest first)."""
        active = status is not None and status not in TERMINAL_SAGA_STATUSES
        key = (by_name, status is not None, active, limited)
        sql = self._lists.get(key)
        if sql is None:
            where = [
                term for term, on in (("saga_name = ?", by_name), ("status = ?", status)) if on
            ]
            if active:
                where.append(ACTIVE)  # lets SQLite use the small index of active sagas
            sql = f'SELECT {_READ} FROM "{self.table}"'
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at_us DESC, saga_id DESC"
            if limited:
                sql += " LIMIT ?"
            self._lists[key] = sql
        return sql

    def select_claimable(self, names: int, *, one: bool) -> str:
        """The claim candidates query for ``names`` saga names (one saga, or oldest first)."""
        key = (names, one)
        sql = self._claims.get(key)
        if sql is None:
            marks = ", ".join("?" * names)
            # Without statistics the planner prefers the by-name index, which holds every
            # saga ever run; a claim must read only the (small) index of active sagas.
            source = "" if one else f' INDEXED BY "{self.table}_active"'
            sql = (
                f'SELECT {_READ} FROM "{self.table}"{source} WHERE {ACTIVE} '
                + ("AND saga_id = ? " if one else "")
                + f"AND saga_name IN ({marks}) AND (lease_owner IS NULL "
                "OR lease_expires_at_us IS NULL OR lease_expires_at_us <= ? "
                "OR lease_owner = ?) "
                # Never this very worker's own lease: its runs renew it, even when late.
                "AND lease_id IS NOT ? "
                "ORDER BY created_at_us, saga_id LIMIT ?"
            )
            self._claims[key] = sql
        return sql


# ---------------------------------------------------------------------- loop side


def save_params(record: SagaRecord) -> tuple[Any, ...]:
    """Encode ``record`` for ``save`` (on the event loop, before anything is queued).

    The document is written with the version the save will give the record.

    Raises:
        SagaDataError: a value cannot be stored as JSON (nothing was written).
    """
    version = record.version
    record.version = version + 1
    try:
        doc = encode_record(record)  # valid UTF-8, as SQLite's TEXT needs, or SagaDataError
    finally:
        record.version = version
    shared = (
        to_us(record.updated_at),
        to_us(record.completed_at),
        record.lease_owner,
        record.lease_id,
        to_us(record.lease_expires_at),
        record.previous_owner,
        record.recovery_attempts,
        doc,
    )
    if version == 0:
        return (
            record.saga_id,
            record.saga_name,
            record.status.value,
            to_us(record.created_at),
            *shared,
        )
    return (record.status.value, version + 1, *shared, record.saga_id, version)


# ---------------------------------------------------------------------- thread side


def _check(value: object, kind: type, field: str, saga_id: str, *, optional: bool) -> Any:
    if (value is None and optional) or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise CorruptRecordError(f"column '{field}' has the wrong type", saga_id=saga_id, field=field)


def to_record(row: tuple[Any, ...]) -> SagaRecord:
    """Build a record from a row: the document, overlaid with the lease columns.

    Raises:
        CorruptRecordError: the document is not a saga record of this row's id, its name
            or status disagrees with the columns, or a column has the wrong type.
    """
    saga_id, name, status, doc, version, updated, owner, lease_id, expires, previous, attempts = row
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
    return record


def save(conn: sqlite3.Connection, sql: Statements, expected: int, params: tuple[Any, ...]) -> None:
    """Insert (``expected`` 0) or update version ``expected``; raise on a conflict.

    ``params`` come from :func:`save_params`.

    Raises:
        ConcurrencyConflictError: the stored version is not ``expected``.
    """
    cursor = conn.execute(sql.update if expected else sql.insert, params)
    if cursor.rowcount == 1:
        return
    saga_id = params[-2] if expected else params[0]
    found = conn.execute(sql.version_of, (saga_id,)).fetchone()
    raise ConcurrencyConflictError(
        saga_id, expected_version=expected, actual_version=None if found is None else found[0]
    )


def load(conn: sqlite3.Connection, sql: Statements, saga_id: str) -> SagaRecord | None:
    """Return the saga's record, or ``None``."""
    row = conn.execute(sql.load, (saga_id,)).fetchone()
    return None if row is None else to_record(row)


def select(
    conn: sqlite3.Connection, query: str, params: tuple[Any, ...], limit: int | None
) -> list[SagaRecord]:
    """Return the readable records a listing query finds, up to ``limit`` (``None``: all).

    ``query`` ends with ``LIMIT ?`` when ``limit`` is given. Unreadable rows are logged
    and skipped; the query is repeated past them until ``limit`` records are found or no
    rows are left, so one bad row never hides the sagas after it.
    """
    skipped: set[str] = set()
    while True:
        want = None if limit is None else limit + len(skipped)
        rows = conn.execute(query, params if want is None else (*params, want)).fetchall()
        records: list[SagaRecord] = []
        for row in rows:
            try:
                records.append(to_record(row))
            except CorruptRecordError as exc:
                if row[0] not in skipped:
                    skipped.add(row[0])
                    logger.error(  # noqa: TRY400 - no traceback needed
                        "list: skipping unreadable saga %s: %s",
                        row[0],
                        exc,
                        extra=log_fields(saga_id=row[0], saga_name=row[1]),
                    )
        if want is None or limit is None:
            return records
        if len(records) >= limit or len(rows) < want:
            return records[:limit]


def delete(conn: sqlite3.Connection, sql: Statements, saga_id: str) -> bool:
    """Delete one saga; return whether it existed."""
    return conn.execute(sql.delete, (saga_id,)).rowcount == 1


def delete_terminal(conn: sqlite3.Connection, sql: Statements, before: int, limit: int) -> int:
    """Delete up to ``limit`` terminal sagas completed before ``before``; return how many."""
    return conn.execute(sql.delete_terminal, (before, limit)).rowcount


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
) -> list[SagaRecord]:
    """Take up to ``limit`` claimable sagas, oldest first, inside the write transaction.

    Rows that cannot be decoded are logged and skipped; the query is repeated past them
    until ``limit`` sagas are taken or no candidates are left.
    """
    lease = _Lease.starting(owner, lease_id, clock(), lease_seconds)
    query = sql.select_claimable(len(names), one=saga_id is not None)
    head: tuple[Any, ...] = (saga_id, *names) if saga_id is not None else names
    claimed: list[SagaRecord] = []
    seen: set[str] = set()  # skipped and claimed ids (a zero lease could match again)
    while len(claimed) < limit:
        want = limit - len(claimed) + len(seen)
        rows = conn.execute(query, (*head, lease.now_us, owner, lease_id, want)).fetchall()
        for row in rows:
            key = row[0]
            if key in seen:
                continue
            seen.add(key)
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
            if len(claimed) >= limit:
                break
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


SINGLE_STATEMENT: frozenset[Callable[..., Any]] = frozenset({save, delete, release})
"""Writes made of one data-changing statement, which SQLite undoes by itself on failure."""
