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
  the engine stamps both; the holder's save keeps a lease with 90% of it left, see
  ``sql``), on ``claim``/``renew`` it is ``lease_seconds``. A worker whose clock is off can
  neither take a live lease early nor keep one longer.
- **Claims** take a batch with ``FOR UPDATE SKIP LOCKED`` in one statement, oldest first
  (``not_before``, else ``created_at``), reading partial indexes of live sagas that hold
  neither finished sagas nor those leased to live workers (``_postgres.claims``).
- **Wake-ups**: a write that makes work (a saga stored free and due, a release, a cancel
  request, a signal or ``wake`` making a parked saga due) notifies the table's channel in
  the same statement; ``wait_for_work`` listens on a connection of its own
  (``_postgres.listener``). Saves of held sagas send nothing.
- **Durable waits**: signals live in a table of their own, so sending one never conflicts
  with the holder's writes; ``send_signal`` (and ``delete``, which deletes a saga's signals
  with it) is one transaction of two statements (``_postgres.signals``).
- **Transactional enqueue**: ``save_in`` inserts through the caller's connection and
  transaction (``_postgres.enqueue``).
- **Scale-out**: every operation but claiming (and ``delete_terminal``'s cleanup batch)
  touches one saga's row by primary key; ``list`` reads an index for each of its filters
  (``_postgres.reads``).

The table layout and the rule for which column or document field wins are described in
``_postgres.sql``; the schema, its indexes and the migration from versions 1 and 2 in
``_postgres.schema`` (created or migrated on first use, or by ``open()``, under an advisory
lock, so workers may start together). The pool and the retry policy of one statement (or
transaction) live in ``_postgres.runner``.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType
from typing import Any, Self

import asyncpg

from lexigram.events.sagas._postgres import claims, requests, signals
from lexigram.events.sagas._postgres.coalesce import NotifyCoalescer
from lexigram.events.sagas._postgres.dsn import connect_arguments, is_url
from lexigram.events.sagas._postgres.enqueue import insert_in, notify, save_unheld
from lexigram.events.sagas._postgres.listener import WorkSignal, check_timeout
from lexigram.events.sagas._postgres.reads import Reads
from lexigram.events.sagas._postgres.rows import UPDATE_ARGUMENTS, record_from_row, save_arguments
from lexigram.events.sagas._postgres.runner import StatementRunner, pool_arguments
from lexigram.events.sagas._postgres.sql import Statements, validate_identifier
from lexigram.events.sagas.config import check_list_limit, check_list_offset
from lexigram.events.sagas.errors import ConcurrencyConflictError, SagaStoreUnavailableError
from lexigram.events.sagas.types import SagaRecord, SagaSignal, SagaStatus

__all__ = ["PostgresSagaStore"]

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
        self._signal = WorkSignal(self._sql.channel, self._db.connect_apart, label=repr(self))
        self._coalescer = NotifyCoalescer(partial(notify, self._db, self._sql.channel))
        self._reads = Reads(self._db, self._sql)

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
        """Close the listening connection, and the pool if the store created it.

        The store is unusable afterwards; a ``wait_for_work`` in progress returns ``False``.
        """
        await self._coalescer.close()
        await self._signal.close()
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

        The stored lease is stamped by the server: ``now()`` plus the record's lease length
        (unless the holder saves a lease with 90% left: it is kept). On success
        ``record.lease_expires_at`` is set to the stored expiry. An insert stores the
        record's cancel request; an update keeps the stored one (and leaves the record's
        alone). A saga stored without a lease, live and due, wakes waiting workers.

        Raises:
            ConcurrencyConflictError: the stored version is not ``record.version``.
            SagaDataError: the record holds a value JSON (or UTF-8) cannot store.
            SagaStoreUnavailableError: the server cannot be reached; the write may or may
                not have landed.
        """
        arguments = save_arguments(record)
        sql = self._sql
        if record.lease_owner is not None:  # start() and every step: no signal to send
            if record.version == 0:
                row = await self._db.query(
                    "fetchrow", sql.insert, *arguments, op="save", saga_id=record.saga_id
                )
            else:
                row = await self._db.query(
                    "fetchrow",
                    sql.update,
                    *arguments[:UPDATE_ARGUMENTS],
                    op="save",
                    saga_id=record.saga_id,
                )
        else:  # an enqueue, or a redrive: wakes waiting workers
            row = await save_unheld(
                self._db, sql, record, arguments, signal=self._signal, coalescer=self._coalescer
            )
        if row is None:
            actual = await self._db.query(
                "fetchval",
                sql.version_of,
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

    async def save_in(self, connection: Any, record: SagaRecord) -> None:
        """Insert a new saga through the caller's connection, inside its transaction if open.

        The transactional enqueue (``enqueue(..., connection=conn)``): the saga exists if
        and only if the caller's transaction commits. The insert runs on ``connection``
        (an asyncpg connection, or a pool's connection proxy, to this store's database),
        and so does the notification that wakes waiting workers for a saga without a lease:
        PostgreSQL delivers it when the transaction commits, never before, and drops it on
        a rollback. Nothing is retried: the transaction is the caller's. On success
        ``record.version`` is 1, also when the caller rolls back afterwards (then nothing
        was stored).

        Args:
            connection: The caller's asyncpg connection.
            record: A new record (version 0).

        Raises:
            TypeError: ``connection`` is not an asyncpg connection, or ``record`` is not a
                ``SagaRecord``.
            ValueError: ``record.version`` is not 0 (only new sagas are written this way).
            ConcurrencyConflictError: the saga exists (committed, or inserted earlier in
                this transaction).
            SagaDataError: the record holds a value JSON (or UTF-8) cannot store.
            SagaStoreUnavailableError: the server cannot be reached (the caller's
                transaction is lost with its connection).
            SagaStoreError: another server error (e.g. the caller's transaction had
                already failed), naming its SQLSTATE.
        """
        await insert_in(self._db, self._sql, connection, record)

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
        return await self._reads.list(saga_name=saga_name)

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | None = None,
        limit: int = 100,
        waiting: bool | None = None,
        correlation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        offset: int = 0,
    ) -> builtins.list[SagaRecord]:
        """Return up to ``limit`` readable sagas matching the filters, newest first.

        The filters are ``SagaStore.list``'s, each read from an index (parked sagas from
        one holding only them); ``offset`` is SQL ``OFFSET`` (see ``_postgres.reads``).
        Unreadable rows are logged (``ERROR``, naming the saga) and skipped; ``load``
        still raises ``CorruptRecordError`` for them.

        Raises:
            TypeError: ``limit`` or ``offset`` is not an int, ``correlation_id`` not a
                str, or a time not a timezone-aware datetime.
            ValueError: ``limit`` or ``offset`` is negative or above
                ``config.MAX_LIST_LIMIT``.
        """
        return await self._reads.list(
            saga_name=saga_name,
            status=status,
            waiting=waiting,
            correlation_id=correlation_id,
            created_after=created_after,
            created_before=created_before,
            limit=check_list_limit(limit),
            offset=check_list_offset(offset),
        )

    async def counts(self, *, saga_name: str | None = None) -> dict[str, int]:
        """Count the sagas (of ``saga_name``, or all) by status, and the parked ones.

        One statement, reading every saga (of the name) once. Returns ``{status value:
        count}`` for every status (zeros included) and ``"waiting"``: the live parked.
        """
        return await self._reads.counts(saga_name)

    async def delete(self, saga_id: str) -> bool:
        """Delete the saga and its signals (one transaction); return whether it existed."""
        return await signals.delete_saga(self._db, self._sql, saga_id)

    async def claim(
        self,
        owner: str,
        lease_id: str,
        *,
        lease_seconds: float,
        saga_names: Collection[str],
        limit: int = 100,
        saga_id: str | None = None,
        exclude: Collection[str] = (),
    ) -> builtins.list[SagaRecord]:
        """Atomically take up to ``limit`` claimable sagas of ``saga_names``, oldest first.

        Expiry and ``not_before`` are judged by the server's ``now()``. Ids in ``exclude``
        are passed over. Rows that cannot be read are logged, put back as they were, and
        passed over. The cost grows with neither finished sagas nor sagas held by live
        workers (see ``sql.Statements.claim``).

        Raises:
            TypeError: ``saga_names`` or ``exclude`` is a str (a collection is needed).
        """
        return await claims.claim_sagas(
            self._db,
            self._sql,
            owner,
            lease_id,
            lease=timedelta(seconds=lease_seconds),
            saga_names=saga_names,
            limit=limit,
            saga_id=saga_id,
            exclude=exclude,
        )

    async def renew(
        self, owner: str, lease_id: str, saga_ids: Sequence[str], *, lease_seconds: float
    ) -> builtins.list[str]:
        """Extend the leases this worker still holds; return the ids it still holds."""
        lease = timedelta(seconds=lease_seconds)
        return await claims.renew_leases(self._db, self._sql, owner, lease_id, saga_ids, lease)

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Drop this worker's lease on a saga; return whether it held it. Wakes workers."""
        return await claims.release_lease(
            self._db, self._sql, self._signal, saga_id, owner, lease_id
        )

    async def request_cancel(self, saga_id: str, reason: str) -> SagaRecord | None:
        """Store a request to cancel the saga; return its record (``None``: no such saga).

        One statement: on a live saga not yet asked, ``cancel_requested_at`` becomes the
        server's ``now()`` and ``cancel_reason`` ``reason``, and waiting workers of every
        process are notified (on commit); version, lease and document stay as they are.
        The record returned is the saga as stored, asked or not (a terminal saga, or one
        already asked, is returned unchanged). Safe to repeat: the first request wins.

        Raises:
            TypeError: ``saga_id`` or ``reason`` is not a str.
            ValueError: ``reason`` holds a NUL character or a lone surrogate, which a
                PostgreSQL text column cannot hold.
            CorruptRecordError: the saga's row cannot be read.
        """
        return await requests.request_cancel(self._db, self._sql, self._signal, saga_id, reason)

    async def cancel_requests(self, owner: str, lease_id: str) -> dict[str, str]:
        """The live sagas ``owner``/``lease_id`` holds that were asked to cancel: id -> reason.

        Reads a partial index holding only live sagas with a pending request: with none
        pending (the usual heartbeat), one probe of an empty index.

        Raises:
            TypeError: ``owner`` or ``lease_id`` is not a str.
        """
        return await requests.cancel_requests(self._db, self._sql, owner, lease_id)

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a sign of new work; return whether one came.

        Signs come from every process using the table, by ``LISTEN``/``NOTIFY`` over a
        connection of this store's own, outside the pool, opened by the first call (see
        ``_postgres.listener``): a saga stored without a lease (live and due), a lease
        released, a cancel request. A sign that arrives while no call waits is kept for the
        next one. A lost or unreachable server never makes this raise: the call then sleeps
        until ``timeout`` (returning ``False``), and the next one reconnects, returning
        ``True`` at once when it does (signs sent meanwhile were lost).

        Raises:
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is negative, infinite or NaN.
            SagaStoreUnavailableError: the store is closed.
        """
        seconds = check_timeout(timeout)
        if self._db.closed:
            raise SagaStoreUnavailableError(f"wait_for_work: {self!r} is closed")
        return await self._signal.wait(seconds)

    async def delete_terminal(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` terminal sagas completed before ``before``; return how many.

        Their signals are deleted in the same transaction.
        """
        return await signals.delete_terminal(self._db, self._sql, before, limit)

    # ------------------------------------------------------------------ durable waits

    async def send_signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        """Store a signal for the saga; return ``False`` if ``signal_id`` was stored before.

        One transaction (see ``_postgres.signals``): the signal gets the saga's next
        ``seq`` (senders of one saga commit in ``seq`` order) and the server's ``now()``
        as ``sent_at``; a saga free and parked for this signal becomes due now, and
        waiting workers of every process are notified on commit. Version, lease and
        document stay as they are. A duplicate ``signal_id`` is reported before the
        saga's status is looked at.

        Raises:
            TypeError: ``saga_id``, ``name`` or ``signal_id`` is not a str.
            ValueError: ``name`` or ``signal_id`` holds NUL or a lone surrogate.
            SagaDataError: the payload is not a JSON object a store can hold (nothing is
                sent to the server).
            SagaNotFoundError: no such saga.
            SagaFinishedError: the saga is terminal (nothing was stored).
            SagaStoreUnavailableError: the server cannot be reached; the signal may or may
                not have been stored (sending it again with its id is safe).
        """
        return await signals.send_signal(
            self._db, self._sql, self._signal, saga_id, name, payload, signal_id
        )

    async def next_signal(self, saga_id: str, name: str, after: int) -> SagaSignal | None:
        """Return the saga's first signal ``name`` whose ``seq`` is above ``after``.

        Raises:
            TypeError: ``saga_id`` or ``name`` is not a str, or ``after`` is not an int.
            CorruptRecordError: the stored payload is not a JSON object.
        """
        return await signals.next_signal(self._db, self._sql, saga_id, name, after)

    async def wake(self, saga_id: str) -> bool:
        """Make a free, live saga due now (``not_before`` = now); return whether it was.

        One statement; version, lease and document stay as they are. Waiting workers of
        every process are notified on commit.

        Raises:
            TypeError: ``saga_id`` is not a str.
        """
        return await signals.wake(self._db, self._sql, self._signal, saga_id)
