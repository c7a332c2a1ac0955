"""Opening ``SQLiteSagaStore``'s file: settings, the schema, its version and migration.

Runs on the store's worker thread, on first use (and again on the next operation if it
failed). Creating the schema, and migrating a table of an older schema version in place,
is idempotent across processes: the check is repeated inside a ``BEGIN IMMEDIATE``
transaction, so of two processes opening the file at once, one creates (or migrates) the
tables and the other finds them done. SQLite's DDL is transactional: a migration that
fails half-way leaves the table as it was.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Final

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._sqlite.reads import is_text
from lexigram.events.sagas._sqlite.sql import SCHEMA_VERSION, Statements
from lexigram.events.sagas.codec import loads_json
from lexigram.events.sagas.errors import SagaStoreError, SchemaVersionError

__all__ = ["SchemaVersionError", "connect", "fill_correlation_ids"]

logger = logging.getLogger(__name__)

_IN_MEMORY: Final = ("", ":memory:")
_MIGRATABLE: Final = ("1", "2")
"""The older schema versions this one migrates in place (1 through 2 to 3)."""
_FILL_BATCH: Final = 1000
"""Rows read at once by :func:`fill_correlation_ids`."""


def connect(
    path: str, sql: Statements, synchronous: str, journal_mode: str, busy_timeout: float
) -> sqlite3.Connection:
    """Open the file, apply the settings and make sure the schema is there."""
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        _set_journal_mode(conn, path, journal_mode, busy_timeout)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        _ensure_schema(conn, sql, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _set_journal_mode(
    conn: sqlite3.Connection, path: str, journal_mode: str, busy_timeout: float
) -> None:
    # Switching a fresh file to WAL needs a moment of exclusive access; another process
    # opening the same file at that instant makes it fail with SQLITE_BUSY: retry.
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            row = conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()
            break
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
    mode = str(row[0]).upper() if row else "?"
    if mode != journal_mode and path not in _IN_MEMORY:
        logger.warning(
            "SQLite saga store %s: journal_mode %s requested, the database uses %s",
            path,
            journal_mode,
            mode,
            extra=log_fields(),
        )


def _schema_version(conn: sqlite3.Connection, sql: Statements) -> str | None:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (f"{sql.table}_meta",)
    ).fetchone()
    if exists is None:
        return None
    row = conn.execute(f"SELECT value FROM {sql.meta} WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def _ensure_schema(conn: sqlite3.Connection, sql: Statements, path: str) -> None:
    """Create or migrate the tables once (idempotent across processes); check the version."""
    found = _schema_version(conn, sql)
    if found is None or found in _MIGRATABLE:
        conn.execute("BEGIN IMMEDIATE")  # serialises processes creating the schema at once
        try:
            found = _schema_version(conn, sql)  # what the process before us left
            if found is None:
                _create_schema(conn, sql, path)
                found = str(SCHEMA_VERSION)
            elif found in _MIGRATABLE:
                _migrate_schema(conn, sql, path, found)
                found = str(SCHEMA_VERSION)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"the saga table '{sql.table}' in '{path}' has schema version {found}, but this "
            f"version of lexigram-events uses schema version {SCHEMA_VERSION}; upgrade "
            "lexigram-events or use another file or table",
            table=sql.table,
            found_version=found,
            supported_version=SCHEMA_VERSION,
        )


def _migrate_schema(conn: sqlite3.Connection, sql: Statements, path: str, found: str) -> None:
    """Schema ``found`` (1 or 2) to 3, inside the caller's transaction, one step at a time.

    Each step adds columns, tables and indexes; 1 to 2 also drops an index, 2 to 3 fills
    the correlation column.
    """
    steps = (*sql.migrate_v1, *sql.migrate_v2) if found == "1" else sql.migrate_v2
    for statement in steps:
        conn.execute(statement)
    fill_correlation_ids(conn, sql)
    conn.execute(
        f"UPDATE {sql.meta} SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
    )
    logger.info(
        "migrated saga table %s in %s from schema version %s to %d",
        sql.table,
        path,
        found,
        SCHEMA_VERSION,
        extra=log_fields(),
    )


def fill_correlation_ids(conn: sqlite3.Connection, sql: Statements) -> None:
    r"""Fill the ``correlation_id`` of the rows the migration's SQL left (after it ran).

    Rare: documents with an escape ``\u`` (a control character, a lone surrogate, or the
    text ``\u``), and documents SQLite's JSON functions refuse. An unreadable document
    gets its saga id (the row is never listed anyway); an id that SQLite cannot hold as
    text (a lone surrogate) stays ``NULL`` (``list`` reads those rows: see ``reads``).
    """
    after = ""
    while rows := conn.execute(
        f'SELECT saga_id, doc FROM "{sql.table}" WHERE correlation_id IS NULL AND saga_id > ? '
        "ORDER BY saga_id LIMIT ?",
        (after, _FILL_BATCH),
    ).fetchall():
        conn.executemany(
            f'UPDATE "{sql.table}" SET correlation_id = ? WHERE saga_id = ?',
            [(_correlation_of(saga_id, doc), saga_id) for saga_id, doc in rows],
        )
        after = rows[-1][0]


def _correlation_of(saga_id: str, doc: object) -> str | None:
    """``record.correlation_id`` of a stored document, as the column holds it."""
    value = None
    try:
        text = doc.decode() if isinstance(doc, bytes) else doc
        if isinstance(text, str):
            metadata = loads_json(text).get("metadata")
            value = metadata.get("correlation_id")
    except (ValueError, RecursionError, AttributeError):  # not JSON, not an object
        value = None
    found = value if isinstance(value, str) else saga_id
    return found if isinstance(found, str) and is_text(found) else None


def _create_schema(conn: sqlite3.Connection, sql: Statements, path: str) -> None:
    taken = conn.execute(
        "SELECT name FROM sqlite_master WHERE name IN (?, ?) ORDER BY name",
        (sql.table, sql.signals),
    ).fetchone()
    if taken is not None:
        raise SagaStoreError(
            f"'{path}' already holds a table '{taken[0]}' that lexigram-events did not "
            f"create (there is no '{sql.table}_meta' table); choose another table name"
        )
    for statement in sql.schema:
        conn.execute(statement)
    conn.execute(f"CREATE TABLE {sql.meta} (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
    conn.execute(
        f"INSERT INTO {sql.meta} (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
    logger.info(
        "created saga table %s (schema version %d) in %s",
        sql.table,
        SCHEMA_VERSION,
        path,
        extra=log_fields(),
    )
