"""``PostgresSagaStore``'s schema: the table, its indexes, its version and the migration.

The schema is made (or migrated) once per store, before its first statement, by
:func:`ensure_schema`. Both happen inside one transaction under a transaction-scoped
advisory lock, with the version read again once the lock is held: of several processes
opening the table at once, one creates (or migrates) it and the others wait, then find it
done. PostgreSQL's DDL is transactional, so a migration that fails half-way leaves the table
as it was. A role that may not create or alter tables works as long as the schema is there.

Version 2 added ``not_before``, ``cancel_requested_at`` and ``cancel_reason`` and the
partial indexes claims read. Version 3 (this one) added durable waits: the columns
``waiting``/``waiting_signal`` (what a parked saga waits for, written by every save) and
``signal_seq`` (the last signal's ``seq``), the ``waiting`` index, and the table
``<table>_signals``; and for operators, the column ``correlation_id`` (written by every
save) and its index. A version 1 or 2 table is migrated in place: the missing columns are
added (no rewrite: they are nullable, or ``signal_seq`` has a constant default), every
row's ``correlation_id`` filled from its document (the one step that writes every row: on a
big table, the longest, see ``_FILL_CORRELATION_IDS``), the missing indexes built (which
holds writes to the table while they are: the table is scanned once per index; the
migration's transaction holds the table, reads included, until it commits, as ``ALTER
TABLE`` locks it), the signals table created, the index
version 1 claimed from dropped, and the version stored. Processes of an older version still
running keep working (version 1's claims, without the dropped index, read more, and ignore
``not_before``); they know nothing of waits, and a saga one of them deletes leaves its
signals behind, which only matters should its id be used again. Rows written by an older
version read as sagas with none of the new fields set; a saga one of them inserts has no
``correlation_id`` (``list(correlation_id=)`` misses it) until this version saves it.

Indexes, and why each is there (claims and heartbeats must stay cheap however many sagas
are finished or held by live workers, see ``sql.Statements.claim``):

- ``fresh``/``due``: free live sagas without / with ``not_before``, per name in claim
  order: a claim reads as many entries as it takes, and never a saga scheduled ahead;
- ``expiry``: held live sagas by lease expiry (no expiry counts as expired): a claim
  reads only the expired ones;
- ``holder``: held live sagas by owner and lease id (an earlier incarnation's sagas);
- ``cancel``: live sagas asked to cancel, by holder: empty unless a request is pending,
  so ``cancel_requests`` on every heartbeat costs one probe of an empty index;
- ``created``/``name``/``status``: listing, newest first; ``completed``: cleanup;
- ``waiting``: parked sagas, newest first (``list(waiting=True)``): empty of the rest;
- ``corr``: by correlation id, newest first (``list(correlation_id=)``);
- signals: by saga and ``seq`` (the key), by saga and ``signal_id`` (unique: one signal
  per id), and by saga, name and ``seq`` (``next_signal``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.rows import correlation_column
from lexigram.events.sagas._postgres.sql import LIVE, NO_EXPIRY, TERMINAL, Statements
from lexigram.events.sagas.codec import loads_json
from lexigram.events.sagas.errors import SchemaVersionError

__all__ = ["SCHEMA_VERSION", "create_statements", "ensure_schema", "migrate_statements"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 3
"""The table layout this module creates and reads; stored in the ``<table>_meta`` table."""
_MIGRATABLE: Final = ("1", "2")
"""The older schema versions migrated in place."""


async def ensure_schema(conn: Any, sql: Statements) -> None:
    """Create the schema, or migrate a version 1 or 2 table, then check the version.

    Args:
        conn: An asyncpg connection (not in a transaction).
        sql: The statements of the table.

    Raises:
        SchemaVersionError: the table holds another (e.g. newer) schema version.
    """
    found = await _stored_version(conn, sql)
    if found is None or found in _MIGRATABLE:
        async with conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs
            # (duplicate key in pg_type), and two migrations would race: the lock
            # serialises them, and the version is read again under it.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.lock_key)
            found = await _stored_version(conn, sql)
            if found is None:
                if not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", sql.schema
                ):
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{sql.schema}"')
                for statement in create_statements(sql):
                    await conn.execute(statement)
            elif found in _MIGRATABLE:
                for statement in migrate_statements(sql):
                    await conn.execute(statement)
                await _fill_correlation_ids(conn, sql)
                logger.info(
                    "migrated the saga table %s from schema version %s to %s",
                    sql.qualified,
                    found,
                    SCHEMA_VERSION,
                    extra=log_fields(),
                )
        found = await _stored_version(conn, sql)
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"the saga table {sql.qualified} has schema version {found!r}, but this version "
            f"of lexigram-events uses schema version {SCHEMA_VERSION}; upgrade "
            "lexigram-events or use another schema or table",
            table=f"{sql.schema}.{sql.table}",
            found_version=str(found),
            supported_version=SCHEMA_VERSION,
        )


async def _stored_version(conn: Any, sql: Statements) -> str | None:
    """The version in the meta table (``None`` when there is no meta table yet)."""
    if await conn.fetchval("SELECT to_regclass($1)", sql.meta) is None:
        return None
    value = await conn.fetchval(f"SELECT value FROM {sql.meta} WHERE key = 'schema_version'")
    return None if value is None else str(value)


def create_statements(sql: Statements) -> list[str]:
    """The DDL creating the table, its indexes and the meta table, idempotently."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {sql.qualified} (
            saga_id text PRIMARY KEY,
            saga_name text NOT NULL,
            status text NOT NULL,
            version bigint NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz,
            completed_at timestamptz,
            lease_owner text,
            lease_id text,
            lease_expires_at timestamptz,
            previous_owner text,
            recovery_attempts integer NOT NULL DEFAULT 0,
            doc json NOT NULL,
            not_before timestamptz,
            cancel_requested_at timestamptz,
            cancel_reason text,
            waiting text,
            waiting_signal text,
            signal_seq bigint NOT NULL DEFAULT 0,
            correlation_id text
        ) WITH (fillfactor = 80)""",
        *_index_statements(sql),
        *_signal_statements(sql),
        f"CREATE TABLE IF NOT EXISTS {sql.meta} (key text PRIMARY KEY, value text NOT NULL)",
        f"INSERT INTO {sql.meta} (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') "
        "ON CONFLICT (key) DO NOTHING",
    ]


def migrate_statements(sql: Statements) -> list[str]:
    """The DDL turning a version 1 or 2 table into this version, idempotently."""
    older = ", ".join(f"'{version}'" for version in _MIGRATABLE)
    return [
        f"""ALTER TABLE {sql.qualified}
            ADD COLUMN IF NOT EXISTS not_before timestamptz,
            ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz,
            ADD COLUMN IF NOT EXISTS cancel_reason text,
            ADD COLUMN IF NOT EXISTS waiting text,
            ADD COLUMN IF NOT EXISTS waiting_signal text,
            ADD COLUMN IF NOT EXISTS signal_seq bigint NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS correlation_id text""",
        # Before the index on it is built, so the update maintains no index entries.
        _FILL_CORRELATION_IDS.format(t=sql.qualified),
        *_index_statements(sql),
        *_signal_statements(sql),
        # Version 1 claimed through (saga_name, created_at) over every live saga, held or
        # not; nothing reads it any more, and every write would keep paying for it.
        f'DROP INDEX IF EXISTS "{sql.schema}".{sql.index("claim_idx")}',
        f"UPDATE {sql.meta} SET value = '{SCHEMA_VERSION}' "
        f"WHERE key = 'schema_version' AND value IN ({older})",
    ]


# ``record.correlation_id``: the document's ``metadata.correlation_id`` if it is a string,
# else the saga id. PostgreSQL cannot take a field out of a ``json`` document holding the
# escape ``\u0000`` anywhere (it refuses to turn it into text, failing the statement), and a
# hand-made row may hold other escapes it refuses (a lone surrogate): rows whose text has
# any ``\u`` escape are left to :func:`_fill_correlation_ids`, which reads them in Python.
_FILL_CORRELATION_IDS: Final = r"""UPDATE {t} SET correlation_id = CASE
        WHEN json_typeof(doc->'metadata'->'correlation_id') = 'string'
        THEN doc->'metadata'->>'correlation_id' ELSE saga_id END
    WHERE correlation_id IS NULL AND strpos(doc::text, E'\\u') = 0"""
_FILL_BATCH: Final = 1000


async def _fill_correlation_ids(conn: Any, sql: Statements) -> None:
    r"""Fill the ``correlation_id`` of the rows the SQL statement left (after it ran).

    Rare: documents with an escape ``\u`` (a control character, or the text ``\u``). An
    id the column cannot hold (NUL) stays ``NULL``, as ``save`` stores it.
    """
    after = None
    while rows := await conn.fetch(
        f"SELECT saga_id, doc::text AS doc FROM {sql.qualified} WHERE correlation_id IS NULL "
        "AND ($1::text IS NULL OR saga_id > $1) ORDER BY saga_id LIMIT $2",
        after,
        _FILL_BATCH,
    ):
        ids = [row["saga_id"] for row in rows]
        await conn.execute(
            f"UPDATE {sql.qualified} AS s SET correlation_id = filled.value "
            "FROM unnest($1::text[], $2::text[]) AS filled(saga_id, value) "
            "WHERE s.saga_id = filled.saga_id",
            ids,
            [_correlation_of(row["saga_id"], row["doc"]) for row in rows],
        )
        after = ids[-1]


def _correlation_of(saga_id: str, doc: str) -> str | None:
    """``record.correlation_id`` of a stored document, as the column holds it."""
    try:
        metadata = loads_json(doc).get("metadata")
        value = metadata.get("correlation_id")
    except (ValueError, AttributeError):  # not JSON, or not an object: not a record
        value = None
    return correlation_column(value if isinstance(value, str) else saga_id)


def _index_statements(sql: Statements) -> list[str]:
    t = sql.qualified
    free = f"status IN {LIVE} AND lease_owner IS NULL"
    held = f"status IN {LIVE} AND lease_owner IS NOT NULL"
    return [
        f"CREATE INDEX IF NOT EXISTS {sql.index('created_idx')} ON {t} (created_at, saga_id)",
        f"CREATE INDEX IF NOT EXISTS {sql.index('name_idx')} ON {t} "
        "(saga_name, created_at, saga_id)",
        # Listing by status (recover() lists live sagas) without walking finished ones.
        f"CREATE INDEX IF NOT EXISTS {sql.index('status_idx')} ON {t} "
        "(status, created_at, saga_id)",
        f"CREATE INDEX IF NOT EXISTS {sql.index('completed_idx')} ON {t} (completed_at) "
        f"WHERE status IN {TERMINAL}",
        f"CREATE INDEX IF NOT EXISTS {sql.index('fresh_idx')} ON {t} "
        f"(saga_name, created_at, saga_id) WHERE {free} AND not_before IS NULL",
        f"CREATE INDEX IF NOT EXISTS {sql.index('due_idx')} ON {t} "
        f"(saga_name, not_before, saga_id) WHERE {free} AND not_before IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {sql.index('expiry_idx')} ON {t} "
        f"(saga_name, (coalesce(lease_expires_at, {NO_EXPIRY}))) WHERE {held}",
        f"CREATE INDEX IF NOT EXISTS {sql.index('holder_idx')} ON {t} "
        f"(lease_owner, lease_id) WHERE {held}",
        f"CREATE INDEX IF NOT EXISTS {sql.index('cancel_idx')} ON {t} "
        f"(lease_owner, lease_id) WHERE status IN {LIVE} AND cancel_requested_at IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {sql.index('waiting_idx')} ON {t} "
        "(created_at, saga_id) WHERE waiting IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {sql.index('corr_idx')} ON {t} "
        "(correlation_id, created_at, saga_id)",
    ]


def _signal_statements(sql: Statements) -> list[str]:
    # No foreign key to the saga table: it would put triggers on the saga table, consulted
    # on every update of a saga (the hot path), and make ``DROP TABLE <table>`` fail; the
    # store deletes a saga's signals in the transaction that deletes the saga instead.
    # ``payload`` is ``json``, not ``jsonb``, as ``doc`` is: a payload may hold NUL.
    return [
        f"""CREATE TABLE IF NOT EXISTS {sql.signals} (
            saga_id text NOT NULL,
            seq bigint NOT NULL,
            name text NOT NULL,
            signal_id text NOT NULL,
            payload json NOT NULL,
            sent_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT {sql.index("signals_pkey")} PRIMARY KEY (saga_id, seq),
            CONSTRAINT {sql.index("signal_id_key")} UNIQUE (saga_id, signal_id)
        )""",
        f"CREATE INDEX IF NOT EXISTS {sql.index('signal_idx')} ON {sql.signals} "
        "(saga_id, name, seq)",
    ]
