"""The PostgreSQL store itself (the public facade is ``lexigram.events.sagas.postgres``).

Needs the ``postgres`` extra (asyncpg)::

    pip install 'lexigram-events[postgres]'

    store = PostgresSagaStore("postgresql://app@db/app")
    manager = SagaManager(store)

How it keeps the store contract (see ``SagaStore``):

- **One statement per write.** ``save`` is one conditional statement (``INSERT ... ON
  CONFLICT DO NOTHING`` for a new saga, ``UPDATE ... WHERE version = $n`` otherwise); only
  a conflict costs a second query, to report the version found. Statements are prepared
  once per connection (asyncpg's statement cache). An owned pool skips asyncpg's per-release
  reset query, so an operation is one round trip.
- **The server's clock judges leases.** Every lease is stamped ``now() + length`` by
  PostgreSQL: on ``save`` the length is the record's (``lease_expires_at - updated_at``, as
  the engine stamps both), on ``claim``/``renew`` it is ``lease_seconds``. A worker whose
  clock is off can neither take a live lease early nor keep one longer.
- **Claims** take a batch with ``FOR UPDATE SKIP LOCKED`` in one statement, oldest first,
  reading a partial index of live sagas, so concurrent claimers never wait for or share a
  saga, and finished sagas piling up do not slow claiming down.
- **Scale-out**: every operation but claiming (and ``delete_terminal``'s cleanup batch)
  touches one saga's row by primary key.

The table layout and the rule for which column or document field wins are described in
``lexigram.events.sagas._postgres.sql``. The schema is created on first use (or by ``open()``),
idempotently and under an advisory lock, so workers may start together. The pool, the
schema check and the retry policy of one statement live in ``_postgres.runner``.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import asyncpg

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.dsn import connect_arguments, is_url
from lexigram.events.sagas._postgres.rows import record_from_row, save_arguments
from lexigram.events.sagas._postgres.runner import StatementRunner, pool_arguments
from lexigram.events.sagas._postgres.sql import Statements, validate_identifier
from lexigram.events.sagas.config import check_list_limit
from lexigram.events.sagas.errors import (
    ConcurrencyConflictError,
    CorruptRecordError,
    SagaStoreError,
)
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["PostgresSagaStore"]

logger = logging.getLogger(__name__)

_MAX_TABLE_NAME = 48  # leaves room for the "_completed_idx" suffix within 63 characters


class PostgresSagaStore:
    """A ``SagaStore`` in a PostgreSQL table, shared by any number of workers.

    Give exactly one of ``dsn`` and ``pool``. With a DSN the store creates its own pool on
    first use (or in ``open()``) and closes it in ``close()``; with a pool it borrows it and
    leaves it open. ``async with PostgresSagaStore(...) as store:`` opens and closes it.

    Args:
        dsn: A libpq connection string: a URL (``postgresql://app@db:5432/app``) or
            ``key=value`` pairs (``host=db port=5432 user=app dbname=app``, values with
            spaces in single quotes), whose keys are mapped to asyncpg's arguments.
        pool: An ``asyncpg.Pool`` to borrow instead. Its connections are reset by asyncpg
            on every release (a round trip) unless it was created with a ``reset`` hook.
        schema: The schema holding the table (created if missing).
        table: The table name (at most 48 characters); ``<table>_meta`` holds the schema
            version.
        min_size: Connections the owned pool keeps open.
        max_size: Connections the owned pool may open.
        command_timeout: Seconds one statement (or waiting for a free connection) may
            take before the store reports itself unavailable; ``None`` waits forever.
        pool_options: Further keyword arguments for ``asyncpg.create_pool`` (``ssl``,
            ``server_settings``, ``statement_cache_size=0`` behind PgBouncer...).

    Raises:
        ValueError: not exactly one of ``dsn`` and ``pool``, a ``key=value`` DSN that is
            malformed or uses an unsupported key (named; values are never quoted), an
            invalid schema or table name, or invalid pool sizes.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        schema: str = "public",
        table: str = "lexigram_sagas",
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 30.0,
        pool_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ValueError("give exactly one of dsn and pool")
        if dsn is not None and not isinstance(dsn, str):
            raise ValueError("dsn must be a str")
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise ValueError(
                f"pool sizes need 0 <= min_size <= max_size and max_size >= 1, got "
                f"min_size={min_size}, max_size={max_size}"
            )
        if command_timeout is not None and command_timeout <= 0:
            raise ValueError(f"command_timeout must be > 0, got {command_timeout}")
        self._sql = Statements(
            validate_identifier(schema, "schema"),
            validate_identifier(table, "table", max_length=_MAX_TABLE_NAME),
        )
        connect_options: dict[str, Any] = {}
        if dsn is not None and not is_url(dsn):
            dsn, connect_options = connect_arguments(dsn)
        self._db = StatementRunner(
            self._sql,
            label=repr(self),
            dsn=dsn,
            pool=pool,
            options=pool_arguments(
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                connect_options=connect_options,
                explicit=pool_options or {},
            ),
            timeout=command_timeout,
        )
        self._select = {
            (by_name, by_status): self._sql.select(by_name=by_name, by_status=by_status)
            for by_name in (False, True)
            for by_status in (False, True)
        }

    def __repr__(self) -> str:
        return f"PostgresSagaStore(table={self._sql.qualified!r})"  # never the DSN

    @property
    def schema(self) -> str:
        """The schema holding the table."""
        return self._sql.schema

    @property
    def table(self) -> str:
        """The table holding one row per saga."""
        return self._sql.table

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The pool in use (``None`` until an owned pool is created)."""
        return self._db.pool

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect (with a DSN) and create the schema if needed; later calls do nothing.

        Raises:
            SagaStoreUnavailableError: the server cannot be reached.
            SchemaVersionError: the table has a schema version this library does not use.
        """
        await self._db.connection_pool()

    async def close(self) -> None:
        """Close the pool if the store created it; the store is unusable afterwards."""
        await self._db.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ SagaStore

    async def save(self, record: SagaRecord) -> None:
        """Insert (version 0) or conditionally update ``record``; bump ``record.version``.

        The stored lease is stamped by the server: ``now()`` plus the record's lease length.
        On success ``record.lease_expires_at`` is set to that stamp.

        Raises:
            ConcurrencyConflictError: the stored version is not ``record.version``.
            SagaDataError: the record holds a value JSON (or UTF-8) cannot store.
            SagaStoreUnavailableError: the server cannot be reached; the write may or may
                not have landed.
        """
        arguments = save_arguments(record)
        statement = self._sql.insert if record.version == 0 else self._sql.update
        row = await self._db.query(
            "fetchrow", statement, *arguments, op="save", saga_id=record.saga_id
        )
        if row is None:
            actual = await self._db.query(
                "fetchval",
                self._sql.version_of,
                record.saga_id,
                op="save",
                saga_id=record.saga_id,
                idempotent=True,
            )
            raise ConcurrencyConflictError(
                record.saga_id, expected_version=record.version, actual_version=actual
            )
        record.version += 1
        record.lease_expires_at = row["lease_expires_at"]

    async def load(self, saga_id: str) -> SagaRecord | None:
        """Return a copy of the saga's record, or ``None``.

        Raises:
            CorruptRecordError: the row cannot be read as a saga record.
        """
        row = await self._db.query(
            "fetchrow", self._sql.load, saga_id, op="load", saga_id=saga_id, idempotent=True
        )
        return None if row is None else record_from_row(row)

    async def list_by_name(self, saga_name: str) -> builtins.list[SagaRecord]:
        """Return every readable saga of ``saga_name``, newest first.

        Unreadable rows are logged (``ERROR``, naming the saga) and skipped.
        """
        return await self._list(saga_name, None, None)

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaRecord]:
        """Return up to ``limit`` readable sagas matching the filters, newest first.

        Unreadable rows are logged (``ERROR``, naming the saga) and skipped; ``load`` still
        raises ``CorruptRecordError`` for them.

        Raises:
            TypeError: ``limit`` is not an int.
            ValueError: ``limit`` is negative or above ``config.MAX_LIST_LIMIT``.
        """
        return await self._list(saga_name, status, check_list_limit(limit))

    async def _list(
        self, saga_name: str | None, status: SagaStatus | None, limit: int | None
    ) -> builtins.list[SagaRecord]:
        """Select newest first, skipping unreadable rows.

        The query is repeated past unreadable rows until ``limit`` records are found or no
        rows are left, so one bad row never hides the sagas after it.
        """
        args: builtins.list[Any] = []
        if saga_name is not None:
            args.append(saga_name)
        if status is not None:
            args.append(SagaStatus(status).value)
        sql = self._select[saga_name is not None, status is not None]
        skipped: set[str] = set()
        while True:
            want = None if limit is None else limit + len(skipped)
            rows = await self._db.query("fetch", sql, want, *args, op="list", idempotent=True)
            records: builtins.list[SagaRecord] = []
            for row in rows:
                try:
                    records.append(record_from_row(row))
                except CorruptRecordError as exc:
                    if row["saga_id"] not in skipped:
                        skipped.add(row["saga_id"])
                        logger.error(  # noqa: TRY400 - no traceback needed
                            "list: skipping unreadable saga %s: %s",
                            row["saga_id"],
                            exc,
                            extra=log_fields(saga_id=row["saga_id"], saga_name=row["saga_name"]),
                        )
            if limit is None or want is None:
                return records
            if len(records) >= limit or len(rows) < want:
                return records[:limit]

    async def delete(self, saga_id: str) -> bool:
        """Delete the saga; return whether it existed."""
        found = await self._db.query(
            "fetchval", self._sql.delete, saga_id, op="delete", saga_id=saga_id
        )
        return found is not None

    async def claim(
        self,
        owner: str,
        lease_id: str,
        *,
        lease_seconds: float,
        saga_names: Collection[str],
        limit: int = 100,
        saga_id: str | None = None,
    ) -> builtins.list[SagaRecord]:
        """Atomically take up to ``limit`` claimable sagas of ``saga_names``, oldest first.

        Expiry is judged by the server's ``now()``. Rows that cannot be read are logged,
        put back as they were, and passed over.
        """
        names = builtins.list(saga_names)
        if not names or limit <= 0:
            return []
        lease = timedelta(seconds=lease_seconds)
        found: builtins.list[tuple[datetime, str, SagaRecord]] = []
        passed_over: builtins.list[str] = []
        while len(found) < limit:
            wanted = limit - len(found)
            rows = await self._db.query(
                "fetch",
                self._sql.claim(by_id=saga_id is not None),
                names,
                owner,
                lease_id,
                lease,
                wanted,
                saga_id if saga_id is not None else passed_over,
                op="claim",
                saga_id=saga_id,
            )
            unreadable = 0
            for row in rows:
                try:
                    found.append((row["created_at"], row["saga_id"], record_from_row(row)))
                except CorruptRecordError as exc:
                    logger.error(  # noqa: TRY400 - known cause
                        "cannot claim saga %s: %s",
                        row["saga_id"],
                        exc,
                        extra=log_fields(
                            saga_id=row["saga_id"], saga_name=row["saga_name"], worker_id=owner
                        ),
                    )
                    await self._unclaim(row, owner)
                    passed_over.append(row["saga_id"])
                    unreadable += 1
            if not unreadable or len(rows) < wanted or saga_id is not None:
                break
        found.sort(key=lambda item: item[:2])
        return [record for _, _, record in found]

    async def _unclaim(self, row: Any, owner: str) -> None:
        """Put back the lease an unreadable row had; it expires anyway if this fails."""
        try:
            await self._db.query(
                "execute",
                self._sql.unclaim,
                row["saga_id"],
                row["version"],
                row["old_version"],
                row["old_updated_at"],
                row["old_lease_owner"],
                row["old_lease_id"],
                row["old_lease_expires_at"],
                row["old_previous_owner"],
                row["old_recovery_attempts"],
                op="claim",
                saga_id=row["saga_id"],
            )
        except SagaStoreError:
            logger.warning(
                "could not restore the lease of saga %s",
                row["saga_id"],
                exc_info=True,
                extra=log_fields(
                    saga_id=row["saga_id"], saga_name=row["saga_name"], worker_id=owner
                ),
            )

    async def renew(
        self, owner: str, lease_id: str, saga_ids: Sequence[str], *, lease_seconds: float
    ) -> builtins.list[str]:
        """Extend the leases this worker still holds; return the ids it still holds."""
        ids = builtins.list(saga_ids)
        if not ids:
            return []
        rows = await self._db.query(
            "fetch",
            self._sql.renew,
            owner,
            lease_id,
            ids,
            timedelta(seconds=lease_seconds),
            op="renew",
            idempotent=True,
        )
        held = {row["saga_id"] for row in rows}
        return [saga_id for saga_id in ids if saga_id in held]

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Drop this worker's lease on a saga; return whether it held it."""
        found = await self._db.query(
            "fetchval", self._sql.release, saga_id, owner, lease_id, op="release", saga_id=saga_id
        )
        return found is not None

    async def delete_terminal(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` terminal sagas completed before ``before``; return how many."""
        if limit <= 0:
            return 0
        status = await self._db.query(
            "execute", self._sql.delete_terminal, before, limit, op="delete_terminal"
        )
        return int(status.split()[-1])
