"""The SQLite store itself (the public facade is ``lexigram.events.sagas.sqlite``).

Example::

    from lexigram.events.sagas import SagaManager
    from lexigram.events.sagas.sqlite import SQLiteSagaStore

    store = SQLiteSagaStore("sagas.db")
    async with SagaManager(store) as manager:
        manager.register(OrderFulfillmentSaga)
        await manager.recover()  # resume what a crashed run left behind
        record = await manager.execute("order_fulfillment", {"order_id": "ord-1"})
    await store.close()

The store runs on the standard library's ``sqlite3`` module: the
``lexigram-events[sqlite]`` extra installs nothing more, and is only needed on a Python
built without SQLite.
"""

from __future__ import annotations

import builtins
import functools
import logging
import math
import os
import re
import warnings
import weakref
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

from lexigram.events.sagas._sqlite import checks, ops, reads
from lexigram.events.sagas._sqlite.ops import save_params, to_us
from lexigram.events.sagas._sqlite.schema import connect
from lexigram.events.sagas._sqlite.signals import SignalMethods
from lexigram.events.sagas._sqlite.sql import Statements
from lexigram.events.sagas._sqlite.watch import Sleepers
from lexigram.events.sagas._sqlite.worker import Operation, SQLiteWorker
from lexigram.events.sagas.config import check_list_limit, check_list_offset
from lexigram.events.sagas.errors import SagaStoreError, SchemaVersionError
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["SQLiteSagaStore", "SchemaVersionError"]

logger = logging.getLogger(__name__)

_TABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
_JOURNAL_MODES: Final = ("WAL", "DELETE", "TRUNCATE", "PERSIST")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SQLiteSagaStore(SignalMethods):
    """A durable saga store in one SQLite file; several processes may share the file.

    Each ``save``, ``claim``, ``release`` returns only once its transaction is committed.
    SQLite work runs on one thread the store starts on first use (the event loop never
    blocks on it); writes that arrive while a commit is in progress are committed together
    in the next transaction (*group commit*), so a hundred sagas running at once share
    fsyncs instead of paying one per step. ``commits`` and ``writes`` count both.

    Processes sharing the file coordinate through SQLite's locks: every write transaction
    is ``BEGIN IMMEDIATE``, waits up to ``busy_timeout`` for the lock, and a claim picks
    and takes its sagas inside one such transaction, so two workers never claim one saga.

    Durability (``synchronous``, with the default ``journal_mode="WAL"``):

    - ``"FULL"`` (default) and ``"EXTRA"``: the WAL is fsynced at every commit; a write
      that returned survives a process crash, an OS crash and a power loss.
    - ``"NORMAL"``: fsyncs only at checkpoints. A write that returned survives a process
      crash, but the last transactions may be lost (rolled back, never corrupted) on an
      OS crash or power loss: sagas then resume from an earlier step, which runs again.
    - ``"OFF"``: no fsync at all. Safe against a process crash, but an OS crash or power
      loss may lose recent writes and can corrupt the database file.

    Rows: the record as one JSON document (the format every store shares) plus indexed
    columns. The lease fields (``version``, ``updated_at``, ``lease_*``,
    ``previous_owner``, ``recovery_attempts``) are read from their columns, which
    ``claim``, ``renew`` and ``release`` update without rewriting the document; so are
    the cancel request's (``cancel_requested_at``, ``cancel_reason``), which only
    ``request_cancel`` writes, and ``not_before``, which ``send_signal`` and ``wake`` may
    set. A copy of ``record.correlation_id`` in a column of its own, written by the saves
    that change it, serves ``list(correlation_id=)``. Signals are kept in a
    ``<table>_signals`` table, deleted with their saga. The schema is created on first
    use; its version is kept in a ``<table>_meta`` table, and a table of schema version 1
    or 2 is migrated in place.

    ``wait_for_work`` hears at once of enqueues, releases, cancel requests, signals and
    wakes made through this store object; of those made by other processes (or other
    store objects) it hears by polling SQLite's ``data_version`` (20 to 100 ms apart)
    while it waits, which also counts their other commits as signs of work.

    Args:
        path: The database file (created if missing). ``":memory:"`` gives a private
            in-memory database (nothing durable; for tests).
        table: The saga table's name (letters, digits, underscores); the store also
            creates ``<table>_meta``, ``<table>_signals`` and a few indexes named after
            it.
        synchronous: SQLite's ``synchronous`` setting (see above).
        journal_mode: ``"WAL"`` (default: readers never block the writer), or one of
            SQLite's rollback journals ``"DELETE"``, ``"TRUNCATE"``, ``"PERSIST"``.
        busy_timeout: Seconds a write waits for another process's lock before the store
            reports ``SagaStoreUnavailableError``.
        clock: Returns the current UTC time; judges and stamps leases, stamps signals.
            It is called on the store's thread (and on the event loop, to tell whether a
            parked saga just saved is due).

    Raises:
        ValueError: a setting is invalid (the message names it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "lexigram_sagas",
        synchronous: str = "FULL",
        journal_mode: str = "WAL",
        busy_timeout: float = 5.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        location = os.fspath(path)
        if not isinstance(location, str):
            raise TypeError("path must be a str or os.PathLike[str]")
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise ValueError(
                f"table must be 1-63 letters, digits or underscores, not starting with a "
                f"digit; got {table!r}"
            )
        if table.lower().startswith("sqlite_"):
            raise ValueError(f"table must not start with 'sqlite_' (reserved); got {table!r}")
        self._synchronous = checks.choice("synchronous", synchronous, _SYNCHRONOUS)
        self._journal_mode = checks.choice("journal_mode", journal_mode, _JOURNAL_MODES)
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not math.isfinite(busy_timeout)
            or busy_timeout <= 0
        ):
            raise ValueError(
                f"busy_timeout must be a positive number of seconds, got {busy_timeout!r}"
            )
        if not callable(clock):
            raise TypeError("clock must be a callable returning a UTC datetime")
        self._path = location
        self._table = table
        self._busy_timeout = float(busy_timeout)
        self._clock = clock
        self._sql = Statements(table)
        self._reads = reads.Reads(table)
        self._closed = False
        self._sleepers = Sleepers()
        self._worker = SQLiteWorker(
            functools.partial(
                connect,
                location,
                self._sql,
                self._synchronous,
                self._journal_mode,
                self._busy_timeout,
            ),
            name=f"lexigram-sqlite-{table}",
        )
        self._finalizer = weakref.finalize(self, _abandon, self._worker, location)
        self._finalizer.atexit = False

    # ------------------------------------------------------------------ introspection

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def table(self) -> str:
        """The saga table's name."""
        return self._table

    @property
    def synchronous(self) -> str:
        """SQLite's ``synchronous`` setting in use (upper case)."""
        return self._synchronous

    @property
    def journal_mode(self) -> str:
        """The journal mode requested (upper case)."""
        return self._journal_mode

    @property
    def commits(self) -> int:
        """Write transactions committed so far (one per group of writes)."""
        return self._worker.commits

    @property
    def writes(self) -> int:
        """Write operations committed so far (saves, claims, renewals, releases, deletes)."""
        return self._worker.writes

    def __repr__(self) -> str:
        return f"SQLiteSagaStore({self._path!r}, table={self._table!r})"

    # ------------------------------------------------------------------ the protocol

    def _submit(self, fn: Operation, *args: Any, write: bool) -> Any:
        if self._closed:
            raise SagaStoreError("the SQLite saga store is closed")
        return self._worker.submit(fn, args, write=write)

    async def save(self, record: SagaRecord) -> None:
        """Insert (version 0) or conditionally update ``record``; bump ``record.version``.

        Returns once the transaction holding the write is committed.

        Raises:
            ConcurrencyConflictError: the stored version is not ``record.version``.
            SagaDataError: a value cannot be stored as JSON (nothing was written).
            SagaStoreUnavailableError: the file is locked too long, or an I/O error.
        """
        expected = record.version
        params, kind = save_params(record)
        await self._submit(ops.save, self._sql, expected, params, kind, write=True)
        record.version = expected + 1
        if (
            record.lease_owner is None
            and self._sleepers
            and not record.is_terminal
            and (record.waiting is None or _due(record.not_before, self._clock))
        ):
            self._sleepers.wake()  # enqueued or redriven, or parked but due: work no one holds

    async def load(self, saga_id: str) -> SagaRecord | None:
        """Return a copy of the saga's record, or ``None``.

        Raises:
            CorruptRecordError: the row cannot be read as a saga record.
        """
        record: SagaRecord | None = await self._submit(ops.load, self._sql, saga_id, write=False)
        return record

    async def list_by_name(self, saga_name: str) -> builtins.list[SagaRecord]:
        """Return every readable saga of ``saga_name``, newest first.

        Unreadable rows are logged (``ERROR``, naming the saga) and skipped.
        """
        query = self._reads.by_name(saga_name)
        found: builtins.list[SagaRecord] = await self._submit(
            reads.select, query, None, write=False
        )
        return found

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

        The filters are ``SagaStore.list``'s, each read from an index; ``offset`` is SQL
        ``OFFSET``, which counts unreadable rows too (see ``_sqlite.reads``). Unreadable
        rows are logged (``ERROR``, naming the saga) and skipped.

        Raises:
            TypeError: ``limit`` or ``offset`` is not an int, ``waiting`` not a bool or
                ``None``, ``correlation_id`` not a str, or a time not a timezone-aware
                datetime.
            ValueError: ``limit`` or ``offset`` is negative or above
                ``config.MAX_LIST_LIMIT``.
        """
        query = self._reads.query(
            saga_name=saga_name,
            status=status,
            waiting=waiting,
            correlation_id=correlation_id,
            created_after=created_after,
            created_before=created_before,
        )
        offset = check_list_offset(offset)
        if check_list_limit(limit) == 0:
            return []
        found: builtins.list[SagaRecord] = await self._submit(
            reads.select, query, limit, offset, write=False
        )
        return found

    async def counts(self, *, saga_name: str | None = None) -> dict[str, int]:
        """Count the sagas (of ``saga_name``, or all) by status, and the parked ones.

        One statement, reading every saga (of the name) once. Returns ``{status value:
        count}`` for every status (zeros included) and ``"waiting"``: the live parked.
        """
        found: dict[str, int] = await self._submit(
            reads.counts, self._reads.counts(saga_name), write=False
        )
        return found

    async def delete(self, saga_id: str) -> bool:
        """Delete the saga and its signals (one transaction); return whether it existed."""
        existed: bool = await self._submit(ops.delete, self._sql, saga_id, write=True)
        return existed

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

        Candidates are read and taken in one write transaction, so processes sharing the
        file never take the same saga. Rows that cannot be decoded are logged and skipped.
        Oldest first means by ``not_before`` when set, else ``created_at``; a free saga
        whose ``not_before`` is still ahead (by the store's clock) is not claimable; ids
        in ``exclude`` are passed over. Each kind of candidate is read from its own small
        index, so a claim costs the same however many sagas are finished or held.

        Raises:
            TypeError: ``exclude`` is not a collection of saga ids.
        """
        passed_over = checks.saga_ids("exclude", exclude)
        names = tuple(dict.fromkeys(saga_names))
        if not names or limit <= 0:
            return []
        claimed: builtins.list[SagaRecord] = await self._submit(
            ops.claim,
            self._sql,
            self._clock,
            owner,
            lease_id,
            lease_seconds,
            names,
            limit,
            saga_id,
            passed_over,
            write=True,
        )
        return claimed

    async def renew(
        self, owner: str, lease_id: str, saga_ids: Sequence[str], *, lease_seconds: float
    ) -> builtins.list[str]:
        """Extend the leases this worker still holds; return the ids it still holds."""
        if not saga_ids:
            return []
        held: builtins.list[str] = await self._submit(
            ops.renew,
            self._sql,
            self._clock,
            owner,
            lease_id,
            tuple(saga_ids),
            lease_seconds,
            write=True,
        )
        return held

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Drop this worker's lease on a saga; return whether it held it."""
        held: bool = await self._submit(
            ops.release, self._sql, saga_id, owner, lease_id, write=True
        )
        if held and self._sleepers:
            self._sleepers.wake()
        return held

    async def request_cancel(self, saga_id: str, reason: str) -> SagaRecord | None:
        """Store a request to cancel the saga; return its record (``None``: no such saga).

        On a live saga without a request, one ``UPDATE`` sets ``cancel_requested_at``
        (the store's clock) and ``cancel_reason`` and nothing else: the version and the
        lease stay, so the holder's writes go on. A saga already asked keeps the first
        request; a terminal saga is left as it is. The record returned is read after the
        write, in the same transaction. Waiters of this store wake at once, those of other
        processes at their next poll.

        Raises:
            TypeError: ``saga_id`` or ``reason`` is not a str.
            CorruptRecordError: the row cannot be read as a saga record (nothing stored).
        """
        stored, record = await self._submit(
            ops.request_cancel,
            self._sql,
            self._clock,
            checks.text("saga_id", saga_id),
            checks.text("reason", reason),
            write=True,
        )
        if stored and self._sleepers:
            self._sleepers.wake()
        found: SagaRecord | None = record
        return found

    async def cancel_requests(self, owner: str, lease_id: str) -> dict[str, str]:
        """The live sagas ``owner``/``lease_id`` holds that were asked to cancel: id -> reason.

        Reads an index that holds only the live sagas with a request: called on every
        heartbeat, it costs next to nothing when no cancel is pending.

        Raises:
            TypeError: ``owner`` or ``lease_id`` is not a str.
        """
        requests: dict[str, str] = await self._submit(
            ops.cancel_requests,
            self._sql,
            checks.text("owner", owner),
            checks.text("lease_id", lease_id),
            write=False,
        )
        return requests

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a sign of new work; return whether one came.

        Signs: a live saga saved without a lease (an enqueue, a redrive, a parked saga
        that is due), a release, a cancel request, a signal that made a saga due or a
        ``wake`` made through this store (at once, once committed), or any commit made to
        the file by another connection (another process, another store object), seen by
        polling ``PRAGMA data_version`` on the store's thread while waiting: every
        20 ms after a change, slowing to every 100 ms after half a second of quiet. Such a
        commit may be no work for this worker (another's progress): callers claim after
        every return. Idle, the wait costs ~0.3 % of a core (the thread's wake-ups).

        Raises:
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is negative or NaN.
            SagaStoreError: the store is closed.
        """
        delay = checks.wait_timeout(timeout)
        if self._closed:
            raise SagaStoreError("the SQLite saga store is closed")
        sleepers, worker = self._sleepers, self._worker
        return await sleepers.wait(
            delay, first=lambda: worker.watch(sleepers.wake), last=worker.unwatch
        )

    async def delete_terminal(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` terminal sagas completed before ``before``; return how many.

        Their signals go with them, in the same transaction.
        """
        if limit <= 0:
            return 0
        deleted: int = await self._submit(
            ops.delete_terminal, self._sql, to_us(before), limit, write=True
        )
        return deleted

    async def close(self) -> None:
        """Finish queued operations, close the connection and end the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._worker.unwatch()
        self._sleepers.wake(result=False)  # no work will come through a closed store
        await self._worker.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _due(not_before: datetime | None, clock: Callable[[], datetime]) -> bool:
    return not_before is None or not_before <= clock()


def _abandon(worker: SQLiteWorker, path: str) -> None:
    """Finalizer of a store garbage-collected without ``close()``: stop its thread."""
    if worker.started and not worker.stopping:
        worker.stop_nowait()
        warnings.warn(f"unclosed SQLiteSagaStore({path!r})", ResourceWarning, stacklevel=1)
