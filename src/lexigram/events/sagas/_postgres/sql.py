"""SQL text of ``PostgresSagaStore``: the schema and every statement, for one table.

Kept apart from the store so the statements can be read (and reviewed) in one place. Only
validated identifiers are interpolated, always double-quoted; every value is a ``$n``
parameter.

Table layout: one row per saga. ``doc`` holds the record as the shared codec's JSON
document (type ``json``, not ``jsonb``: ``jsonb`` rejects NUL characters, which contexts
may hold). The other columns are what queries filter, order or update in SQL:

- ``saga_name``, ``status``, ``created_at``, ``completed_at`` are copies of the document's
  fields, written by ``save`` together with it (``created_at`` of a record without one is
  stored as the epoch so ordering needs no ``NULLS`` clause);
- ``version``, ``updated_at``, ``lease_owner``, ``lease_id``, ``lease_expires_at``,
  ``previous_owner``, ``recovery_attempts`` are the store-managed fields: ``claim``,
  ``renew`` and ``release`` change them in SQL without rewriting the document, so on
  reading, these columns are laid over the decoded document (the columns win).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from lexigram.events.sagas.errors import SchemaVersionError

__all__ = ["SCHEMA_VERSION", "Statements", "ensure_schema", "validate_identifier"]

SCHEMA_VERSION = 1
"""The table layout this module creates and reads; stored in the ``<table>_meta`` table."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LIVE = "('pending', 'running', 'compensating')"
_TERMINAL = "('completed', 'compensated', 'failed')"

# Every statement that hands a record out selects these, in this order (see _pg_rows).
_COLUMNS = (
    "saga_id, saga_name, status, created_at, version, updated_at, lease_owner, lease_id, "
    "lease_expires_at, previous_owner, recovery_attempts, doc::text AS doc"
)


def validate_identifier(value: object, what: str, *, max_length: int = 63) -> str:
    """Return ``value`` if it is a plain SQL identifier of at most ``max_length`` characters.

    Raises:
        ValueError: naming ``what`` (the parameter), never interpolating unsafe text.
    """
    if not isinstance(value, str) or _IDENTIFIER.fullmatch(value) is None:
        raise ValueError(
            f"{what} must be a SQL identifier (letters, digits and '_', not starting with a digit)"
        )
    if len(value) > max_length:
        raise ValueError(f"{what} must be at most {max_length} characters, got {len(value)}")
    return value


async def ensure_schema(conn: Any, sql: Statements) -> None:
    """Create the table, indexes and meta table if missing, then check the schema version.

    Safe when several workers start at once: creation runs under a transaction-scoped
    advisory lock, so the second worker waits and then finds everything in place. A worker
    whose role may not create tables works as long as they exist.

    Args:
        conn: An asyncpg connection.
        sql: The statements of the table.

    Raises:
        SchemaVersionError: the table holds another (e.g. newer) schema version.
    """
    found = await _stored_version(conn, sql)
    if found is None:
        async with conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs
            # (duplicate key in pg_type); the lock serialises the creators.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.lock_key)
            if not await conn.fetchval(sql.schema_exists, sql.schema):
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{sql.schema}"')
            for statement in sql.create_schema():
                await conn.execute(statement)
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
    value = await conn.fetchval(sql.read_version)
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Statements:
    """Every SQL statement of the store, for one ``schema.table``."""

    schema: str
    table: str

    @property
    def qualified(self) -> str:
        """The quoted ``"schema"."table"``."""
        return f'"{self.schema}"."{self.table}"'

    @property
    def meta(self) -> str:
        """The quoted meta table holding the schema version."""
        return f'"{self.schema}"."{self.table}_meta"'

    @property
    def lock_key(self) -> int:
        """A stable 64-bit advisory lock key for creating this table."""
        digest = hashlib.blake2b(
            f"lexigram-events:{self.schema}.{self.table}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big", signed=True)

    # ------------------------------------------------------------------ schema

    @property
    def read_version(self) -> str:
        """Read the stored schema version."""
        return f"SELECT value FROM {self.meta} WHERE key = 'schema_version'"

    @property
    def schema_exists(self) -> str:
        """Whether the schema exists (creating it needs a privilege ``public`` does not)."""
        return "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"

    def create_schema(self) -> list[str]:
        """The DDL creating the table, its indexes and the meta table, idempotently."""
        t, name = self.qualified, self.table
        return [
            f"""CREATE TABLE IF NOT EXISTS {t} (
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
                doc json NOT NULL
            ) WITH (fillfactor = 80)""",
            # Claims read only live sagas: finished ones piling up never slow them down.
            f'CREATE INDEX IF NOT EXISTS "{name}_claim_idx" ON {t} '
            f"(saga_name, created_at, saga_id) WHERE status IN {_LIVE}",
            f'CREATE INDEX IF NOT EXISTS "{name}_created_idx" ON {t} (created_at, saga_id)',
            f'CREATE INDEX IF NOT EXISTS "{name}_name_idx" ON {t} (saga_name, created_at, saga_id)',
            # Listing by status (recover() lists live sagas) without walking finished ones.
            f'CREATE INDEX IF NOT EXISTS "{name}_status_idx" ON {t} (status, created_at, saga_id)',
            f'CREATE INDEX IF NOT EXISTS "{name}_completed_idx" ON {t} (completed_at) '
            f"WHERE status IN {_TERMINAL}",
            f"CREATE TABLE IF NOT EXISTS {self.meta} (key text PRIMARY KEY, value text NOT NULL)",
            f"INSERT INTO {self.meta} (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') "
            "ON CONFLICT (key) DO NOTHING",
        ]

    # ------------------------------------------------------------------ saves

    @property
    def insert(self) -> str:
        """Insert version 1 unless the id exists; returns the server-stamped lease."""
        return f"""INSERT INTO {self.qualified} (saga_id, saga_name, status, version, created_at,
                updated_at, completed_at, lease_owner, lease_id, lease_expires_at,
                previous_owner, recovery_attempts, doc)
            VALUES ($1, $3, $4, $2::bigint + 1, $5, $6, $7, $8, $9, now() + $10::interval,
                $11, $12, $13::text::json)
            ON CONFLICT (saga_id) DO NOTHING
            RETURNING lease_expires_at"""

    @property
    def update(self) -> str:
        """Write the next version if the stored one is ``$2``; returns the stamped lease."""
        return f"""UPDATE {self.qualified} SET saga_name = $3, status = $4,
                version = version + 1, created_at = $5, updated_at = $6, completed_at = $7,
                lease_owner = $8, lease_id = $9, lease_expires_at = now() + $10::interval,
                previous_owner = $11, recovery_attempts = $12, doc = $13::text::json
            WHERE saga_id = $1 AND version = $2
            RETURNING lease_expires_at"""

    @property
    def version_of(self) -> str:
        """The stored version (the conflict path of ``save`` only)."""
        return f"SELECT version FROM {self.qualified} WHERE saga_id = $1"

    # ------------------------------------------------------------------ reads

    @property
    def load(self) -> str:
        """One saga by id."""
        return f"SELECT {_COLUMNS} FROM {self.qualified} WHERE saga_id = $1"

    def select(self, *, by_name: bool, by_status: bool) -> str:
        """Newest first, optionally filtered; ``$1`` is the limit (``NULL``: no limit)."""
        filters = []
        if by_name:
            filters.append("saga_name = $2")
        if by_status:
            filters.append(f"status = ${2 + by_name}")
        where = f" WHERE {' AND '.join(filters)}" if filters else ""
        return (
            f"SELECT {_COLUMNS} FROM {self.qualified}{where} "
            "ORDER BY created_at DESC, saga_id DESC LIMIT $1"
        )

    @property
    def delete(self) -> str:
        """Delete one saga; returns a row if it existed."""
        return f"DELETE FROM {self.qualified} WHERE saga_id = $1 RETURNING true"

    @property
    def delete_terminal(self) -> str:
        """Delete up to ``$2`` terminal sagas completed before ``$1``."""
        t = self.qualified
        return f"""DELETE FROM {t} WHERE saga_id IN (
                SELECT saga_id FROM {t}
                WHERE status IN {_TERMINAL} AND completed_at < $1
                ORDER BY completed_at LIMIT $2
                FOR UPDATE SKIP LOCKED)"""

    # ------------------------------------------------------------------ leases

    def claim(self, *, by_id: bool) -> str:
        """Lease up to ``$5`` claimable sagas, oldest first, in one statement.

        ``$1`` names, ``$2`` owner, ``$3`` lease id, ``$4`` lease length, ``$6`` the id to
        claim (``by_id``) or the ids to pass over (rows found unreadable). The claim rule is
        ``store.is_claimable`` with the server's ``now()``. The former lease is returned too
        (``old_*``), so a row that turns out unreadable can be put back as it was.
        """
        t = self.qualified
        only = "saga_id = $6" if by_id else "saga_id <> ALL($6::text[])"
        return f"""WITH picked AS (
                SELECT saga_id, version AS old_version, updated_at AS old_updated_at,
                    lease_owner AS old_lease_owner, lease_id AS old_lease_id,
                    lease_expires_at AS old_lease_expires_at,
                    previous_owner AS old_previous_owner,
                    recovery_attempts AS old_recovery_attempts
                FROM {t}
                WHERE saga_name = ANY($1::text[]) AND status IN {_LIVE} AND {only}
                    AND (lease_owner IS NULL OR lease_expires_at IS NULL
                        OR lease_expires_at <= now() OR lease_owner = $2)
                    AND lease_id IS DISTINCT FROM $3
                ORDER BY created_at, saga_id
                LIMIT $5
                FOR UPDATE SKIP LOCKED)
            UPDATE {t} AS s SET
                previous_owner = s.lease_owner,
                recovery_attempts = s.recovery_attempts
                    + CASE WHEN s.lease_owner IS NULL THEN 0 ELSE 1 END,
                lease_owner = $2, lease_id = $3, lease_expires_at = now() + $4::interval,
                updated_at = now(), version = s.version + 1
            FROM picked WHERE s.saga_id = picked.saga_id
            RETURNING s.saga_id, s.saga_name, s.status, s.created_at, s.version, s.updated_at,
                s.lease_owner, s.lease_id, s.lease_expires_at, s.previous_owner,
                s.recovery_attempts, s.doc::text AS doc, picked.old_version,
                picked.old_updated_at, picked.old_lease_owner, picked.old_lease_id,
                picked.old_lease_expires_at, picked.old_previous_owner,
                picked.old_recovery_attempts"""

    @property
    def unclaim(self) -> str:
        """Put an unreadable row's lease back as it was before ``claim`` took it."""
        return f"""UPDATE {self.qualified} SET version = $3, updated_at = $4,
                lease_owner = $5, lease_id = $6, lease_expires_at = $7,
                previous_owner = $8, recovery_attempts = $9
            WHERE saga_id = $1 AND version = $2"""

    @property
    def renew(self) -> str:
        """Extend the live leases ``$1``/``$2`` holds among ids ``$3``; returns those ids."""
        return f"""UPDATE {self.qualified} SET lease_expires_at = now() + $4::interval
            WHERE saga_id = ANY($3::text[]) AND lease_owner = $1 AND lease_id = $2
                AND status IN {_LIVE}
            RETURNING saga_id"""

    @property
    def release(self) -> str:
        """Drop the lease if ``$2``/``$3`` holds it; returns a row if it did."""
        return f"""UPDATE {self.qualified} SET lease_owner = NULL, lease_id = NULL,
                lease_expires_at = NULL, version = version + 1
            WHERE saga_id = $1 AND lease_owner = $2 AND lease_id = $3
            RETURNING true"""
