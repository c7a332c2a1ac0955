"""The thread that owns ``SQLiteSagaStore``'s connection, and its group commit.

The event loop never touches SQLite. Each store call becomes an *operation*: a plain
function run on this thread with the connection as first argument, plus an asyncio future
the thread resolves. The thread takes everything queued at once (a *batch*) and:

1. runs the batch's reads, each its own (WAL snapshot) read, and hands their results back;
2. runs all of its writes in **one** ``BEGIN IMMEDIATE ... COMMIT`` transaction, each write
   inside its own ``SAVEPOINT`` so that a conflict or error in one rolls back only that
   one; once ``COMMIT`` returns (durable, with ``synchronous=FULL``), it resolves them.

While one transaction commits (the fsync), the next calls queue up, so many sagas running
at once share each commit instead of paying one fsync per step: that is the group commit.
Results go back with one ``loop.call_soon_threadsafe`` per batch and event loop.

While ``wait_for_work`` waits, the thread also polls ``PRAGMA data_version`` between
batches (see ``watch``): it then blocks on its queue for at most the poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._sqlite.ops import SINGLE_STATEMENT
from lexigram.events.sagas._sqlite.watch import ChangeWatch
from lexigram.events.sagas.errors import SagaError, SagaStoreError, SagaStoreUnavailableError

__all__ = ["Operation", "SQLiteWorker", "map_error"]

logger = logging.getLogger(__name__)

Operation = Callable[..., Any]
"""``fn(connection, *args) -> result``, run on the worker thread."""

_Item = tuple[Operation, tuple[Any, ...], bool, "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", BaseException | None, Any]


class _Stop:
    """Queued by ``stop()``: finish what came before, then end the thread."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any] | None) -> None:
        self.future = future


class _Poke:
    """Queued by ``watch()``: wakes a thread blocked on its queue, so that it polls."""

    __slots__ = ()


_POKE: Final = _Poke()


_MAX_BATCH: Final = 2048
"""Most operations taken into one batch (bounds how long a batch keeps readers waiting)."""

# SQLite result codes meaning "cannot do it right now": a lock held too long, an I/O or
# disk-full error, a file that cannot be opened. The operation may succeed when retried.
_TRANSIENT: Final = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_PROTOCOL",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
)


def map_error(exc: Exception, doing: str) -> Exception:
    """Turn a ``sqlite3`` error into the library's error tree; pass other errors through.

    Transient conditions ("database is locked" after the busy timeout, I/O errors, a full
    disk) become ``SagaStoreUnavailableError`` (the engine retries those); anything else
    from SQLite (a corrupt file, a missing table) becomes ``SagaStoreError``.
    """
    if not isinstance(exc, sqlite3.Error):
        return exc
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    error: SagaError
    if name.startswith(_TRANSIENT) or (
        isinstance(exc, sqlite3.OperationalError) and name == "OperationalError"
    ):
        error = SagaStoreUnavailableError(f"SQLite store unavailable while {doing}: {exc} ({name})")
    else:
        error = SagaStoreError(f"SQLite store error while {doing}: {exc} ({name})")
    error.__cause__ = exc
    return error


def _resolve(outcomes: list[_Outcome]) -> None:
    """Resolve futures on their loop (futures cancelled meanwhile are left alone)."""
    for future, error, value in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _roll_back(conn: sqlite3.Connection) -> None:
    """End a failed write transaction, if SQLite has not already rolled it back."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.warning(
                "rolling back a failed SQLite write transaction failed", extra=log_fields()
            )


class SQLiteWorker:
    """One thread, one connection, a queue of operations; started on first use.

    Args:
        connect: Opens and prepares the connection (called on the worker thread; retried
            on the next batch if it fails).
        name: The thread's name.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        self._name = name
        self._queue: queue.SimpleQueue[_Item | _Stop | _Poke] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._watch = ChangeWatch()
        self.stopping = False
        self.commits = 0
        self.writes = 0

    @property
    def started(self) -> bool:
        """Whether the thread was started."""
        return self._thread is not None

    def submit(self, fn: Operation, args: tuple[Any, ...], *, write: bool) -> asyncio.Future[Any]:
        """Queue ``fn(connection, *args)``; return a future of its result (loop side)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._start()
        self._queue.put((fn, args, write, future))
        return future

    def watch(self, on_change: Callable[[], None]) -> None:
        """Poll for commits of other connections, calling ``on_change`` on this thread.

        Loop side; until :meth:`unwatch`. Starts the thread (and opens the file) if needed.
        """
        if self.stopping:
            return
        self._watch.start(on_change)
        if self._thread is None:
            self._start()
        self._queue.put(_POKE)

    def unwatch(self) -> None:
        """Stop polling (loop side)."""
        self._watch.stop()

    @property
    def polls(self) -> int:
        """How many times the thread read ``data_version`` (a probe for tests)."""
        return self._watch.polls

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()
                self._thread = thread

    async def stop(self) -> None:
        """Finish the queued operations, close the connection and end the thread."""
        self.stopping = True
        thread = self._thread
        if thread is None:
            return
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(_Stop(done))
        await done
        thread.join()

    def stop_nowait(self) -> None:
        """Ask the thread to stop without waiting (for finalizers)."""
        self.stopping = True
        if self._thread is not None:
            self._queue.put(_Stop(None))

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        take = self._queue.get
        take_nowait = self._queue.get_nowait
        watch = self._watch
        stop: _Stop | None = None
        while stop is None:
            try:
                batch = [take(timeout=watch.block_for())]
            except queue.Empty:  # no operation within the poll interval
                if watch.due():
                    self._poll()
                continue
            try:
                while len(batch) < _MAX_BATCH:
                    batch.append(take_nowait())
            except queue.Empty:
                pass
            reads: list[_Item] = []
            writes: list[_Item] = []
            for item in batch:
                if isinstance(item, _Poke):
                    continue
                if isinstance(item, _Stop):
                    stop = item
                elif stop is not None:
                    self._refuse(item)  # queued after close(): the store is gone
                else:
                    (writes if item[2] else reads).append(item)
            if reads or writes:
                try:
                    self._run_batch(reads, writes)
                except Exception as exc:  # a bug here must not leave callers waiting forever
                    logger.exception("SQLite saga store worker failed a batch", extra=log_fields())
                    self._post(
                        [(item[3], map_error(exc, "running"), None) for item in reads + writes]
                    )
            if stop is None and watch.due():
                self._poll()
        self._shut_down(stop)

    def _poll(self) -> None:
        """Read ``data_version`` for ``wait_for_work`` (opening the file if needed)."""
        try:
            self._watch.poll(self._connection)
        except Exception as exc:  # the next poll, or the next operation, tries again
            logger.debug("polling the SQLite saga store failed: %s", exc, extra=log_fields())

    def _run_batch(self, reads: list[_Item], writes: list[_Item]) -> None:
        conn = self._conn
        if conn is None:
            try:
                conn = self._connection()
            except Exception as exc:
                logger.warning("cannot open the SQLite saga store: %s", exc, extra=log_fields())
                self._post([(item[3], map_error(exc, "opening"), None) for item in reads + writes])
                return
        if reads:
            self._post(self._run_reads(conn, reads))
        if writes:
            self._post(self._run_writes(conn, writes))

    @staticmethod
    def _run_reads(conn: sqlite3.Connection, reads: list[_Item]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        for fn, args, _, future in reads:
            try:
                outcomes.append((future, None, fn(conn, *args)))
            except Exception as exc:
                outcomes.append((future, map_error(exc, "reading"), None))
        return outcomes

    def _run_writes(self, conn: sqlite3.Connection, writes: list[_Item]) -> list[_Outcome]:
        failed: list[_Outcome] = []  # ops that failed on their own (rolled back to savepoint)
        done: list[tuple[asyncio.Future[Any], Any]] = []
        execute = conn.execute
        position = 0  # writes before it have an outcome in `failed` or `done`
        # A lone write needs no savepoint: if it fails, rolling the transaction back undoes
        # exactly it. Nor does a write of one statement: SQLite undoes a failed statement on
        # its own and leaves the transaction open. Savepoints (two statements each, and two
        # trips through the GIL) are kept for the writes of several statements (claims).
        alone = len(writes) == 1
        try:
            execute("BEGIN IMMEDIATE")
            for fn, args, _, future in writes:
                guarded = not alone and fn not in SINGLE_STATEMENT
                if guarded:
                    execute("SAVEPOINT op")
                try:
                    value = fn(conn, *args)
                except Exception as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole transaction back: fail the batch
                    if alone:
                        execute("ROLLBACK")
                        return [(future, map_error(exc, "writing"), None)]
                    if guarded:
                        execute("ROLLBACK TO op")
                        execute("RELEASE op")
                    failed.append((future, map_error(exc, "writing"), None))
                else:
                    if guarded:
                        execute("RELEASE op")
                    done.append((future, value))
                position += 1
            execute("COMMIT")
        except Exception as exc:
            # The transaction is lost, or its commit failed and may or may not have landed:
            # every write still pending is in doubt, reported as the store being unavailable
            # (the engine retries, and after a doubtful write checks whether it landed).
            _roll_back(conn)
            error = map_error(exc, "writing")
            if not isinstance(error, SagaStoreUnavailableError):
                error = SagaStoreUnavailableError(f"SQLite write transaction failed: {exc}")
                error.__cause__ = exc
            logger.warning(
                "SQLite write transaction of %d operations failed: %s",
                len(writes),
                exc,
                extra=log_fields(),
            )
            doubtful = [future for future, _ in done] + [item[3] for item in writes[position:]]
            return failed + [(future, error, None) for future in doubtful]
        self.commits += 1
        self.writes += len(done)
        failed.extend((future, None, value) for future, value in done)
        return failed

    @staticmethod
    def _post(outcomes: list[_Outcome]) -> None:
        """Hand results back: one ``call_soon_threadsafe`` per event loop in the batch."""
        if not outcomes:
            return
        first_loop = outcomes[0][0].get_loop()
        groups: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {first_loop: outcomes}
        if any(item[0].get_loop() is not first_loop for item in outcomes):
            groups = {}
            for item in outcomes:
                groups.setdefault(item[0].get_loop(), []).append(item)
        for loop, items in groups.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop was closed while the operation ran
                logger.debug(
                    "event loop closed before a SQLite result could be delivered",
                    extra=log_fields(),
                )

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened (and its ``data_version`` noted) on first use."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
            self._watch.opened(conn)
        return conn

    def _refuse(self, item: _Item | _Stop | _Poke) -> None:
        if not isinstance(item, _Stop | _Poke):
            self._post([(item[3], SagaStoreError("the SQLite saga store is closed"), None)])

    def _shut_down(self, stop: _Stop) -> None:
        try:
            while True:
                self._refuse(self._queue.get_nowait())
        except queue.Empty:
            pass
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                logger.warning(
                    "closing the SQLite saga store failed", exc_info=True, extra=log_fields()
                )
        if stop.future is not None:
            self._post([(stop.future, None, None)])
