"""SQLiteSagaStore runs the store conformance suite, plus what is special about it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas import (
    ConcurrencyConflictError,
    CorruptRecordError,
    SagaManager,
    SagaRecord,
    SagaStatus,
    SagaStepStatus,
    SagaStore,
    SagaStoreError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas._logging import LOG_FIELDS
from lexigram.events.sagas.codec import encode_record
from lexigram.events.sagas.sqlite import SchemaVersionError, SQLiteSagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.testing.contract import (
    BASE_TIME,
    CorruptRow,
    ExpireLeases,
    Fault,
    StoreContract,
    full_record,
    make_record,
    same_fields,
)
from tests.support.sqlite_measure import ThreeSteps
from tests.support.sqlite_worker import run_workers, spawn


@contextlib.contextmanager
def raw(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A separate connection to the store's file, committing on success."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def to_us(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SagaStore]:
    sqlite_store = SQLiteSagaStore(db_path)
    yield sqlite_store
    await sqlite_store.close()


@pytest.fixture
def expire_leases() -> ExpireLeases:
    async def expire(store: SagaStore, saga_ids: list[str]) -> None:
        assert isinstance(store, SQLiteSagaStore)
        past = to_us(datetime.now(UTC) - timedelta(seconds=1))
        with raw(store.path) as conn:
            conn.executemany(
                f"UPDATE {store.table} SET lease_expires_at_us = ? WHERE saga_id = ?",
                [(past, saga_id) for saga_id in saga_ids],
            )

    return expire


@pytest.fixture
def corrupt_row() -> CorruptRow:
    async def corrupt(store: SagaStore, saga_id: str, *, fault: Fault = "garbage") -> None:
        assert isinstance(store, SQLiteSagaStore)
        await store.load(saga_id)  # creates the schema
        doc = {
            "garbage": "{not json",
            "foreign_name": encode_record(make_record(saga_id, saga_name="other")),
            "foreign_id": encode_record(make_record("someone-else")),
        }[fault]
        with raw(store.path) as conn:
            conn.execute(
                f"INSERT INTO {store.table} (saga_id, saga_name, status, version, "
                "created_at_us, recovery_attempts, doc) VALUES (?, 'orders', 'running', 1, ?, "
                "0, ?)",
                (saga_id, to_us(BASE_TIME), doc),
            )

    return corrupt


async def run_on_thread(store: SQLiteSagaStore, fn: Any, *args: Any) -> Any:
    """Run ``fn(connection, *args)`` on the store's thread (a read operation)."""
    return await store._submit(fn, *args, write=False)


class TestSQLiteStore(StoreContract):
    """The conformance suite on SQLite."""


# ---------------------------------------------------------------------- settings


def test_store_satisfies_protocol(db_path: Path) -> None:
    """SQLiteSagaStore is a SagaStore."""
    assert isinstance(SQLiteSagaStore(db_path), SagaStore)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("synchronous", "SOMETIMES"),
        ("synchronous", 2),
        ("journal_mode", "MEMORY"),
        ("journal_mode", "wal; DROP TABLE x"),
        ("busy_timeout", 0),
        ("busy_timeout", -1.0),
        ("busy_timeout", float("nan")),
        ("busy_timeout", True),
    ],
)
def test_invalid_setting_is_rejected_naming_it(db_path: Path, setting: str, value: Any) -> None:
    """A bad synchronous, journal_mode or busy_timeout raises ValueError naming the setting."""
    with pytest.raises(ValueError, match=setting):
        SQLiteSagaStore(db_path, **{setting: value})


@pytest.mark.parametrize(
    "table",
    ['x"; DROP TABLE lexigram_sagas; --', "has space", "1starts_with_digit", "", "sqlite_x", "é"],
)
def test_table_name_injection_is_rejected(db_path: Path, table: str) -> None:
    """A table name that is not a plain identifier raises ValueError naming ``table``."""
    with pytest.raises(ValueError, match="table"):
        SQLiteSagaStore(db_path, table=table)


async def test_durable_settings_by_default(db_path: Path) -> None:
    """The connection runs in WAL mode with synchronous=FULL unless told otherwise."""
    async with SQLiteSagaStore(db_path) as store:
        mode = await run_on_thread(store, lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        sync = await run_on_thread(store, lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    assert (mode, sync) == ("wal", 2)


async def test_chosen_settings_are_applied(db_path: Path) -> None:
    """Both settings are case-insensitive and applied to the connection."""
    async with SQLiteSagaStore(db_path, synchronous="normal", journal_mode="delete") as store:
        mode = await run_on_thread(store, lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        sync = await run_on_thread(store, lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert (store.synchronous, store.journal_mode) == ("NORMAL", "DELETE")
    assert (mode, sync) == ("delete", 1)


# ---------------------------------------------------------------------- schema


async def test_schema_version_mismatch_names_both_versions(db_path: Path) -> None:
    """A file written with another schema version is refused, naming both versions."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("s-1"))
    with raw(db_path) as conn:
        conn.execute("UPDATE lexigram_sagas_meta SET value = '7' WHERE key = 'schema_version'")
    async with SQLiteSagaStore(db_path) as reopened:
        with pytest.raises(SchemaVersionError) as caught:
            await reopened.load("s-1")
    assert (caught.value.found_version, caught.value.supported_version) == ("7", 3)
    assert "schema version 7" in str(caught.value)
    assert "schema version 3" in str(caught.value)


async def test_foreign_table_with_the_same_name_is_refused(db_path: Path) -> None:
    """A table of that name the library did not create is reported, not written to."""
    with raw(db_path) as conn:
        conn.execute("CREATE TABLE lexigram_sagas (x INTEGER)")
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(SagaStoreError, match="did not create"):
            await store.load("s-1")


async def test_tables_in_one_file_are_independent(db_path: Path) -> None:
    """Two stores using two table names in one file do not see each other's sagas."""
    async with (
        SQLiteSagaStore(db_path, table="a") as first,
        SQLiteSagaStore(db_path, table="b") as second,
    ):
        await first.save(make_record("s-1"))
        assert await second.load("s-1") is None
        assert await first.load("s-1") is not None


async def test_corrupt_column_is_reported(store: SagaStore) -> None:
    """A lease column of the wrong type raises CorruptRecordError naming saga and column."""
    assert isinstance(store, SQLiteSagaStore)
    await store.save(make_record("s-1"))
    with raw(store.path) as conn:
        conn.execute("UPDATE lexigram_sagas SET lease_expires_at_us = 'soon'")
    with pytest.raises(CorruptRecordError) as caught:
        await store.load("s-1")
    assert (caught.value.saga_id, caught.value.field) == ("s-1", "lease_expires_at_us")


async def test_skipped_rows_are_logged_with_the_structured_fields(
    store: SagaStore, corrupt_row: CorruptRow, caplog: pytest.LogCaptureFixture
) -> None:
    """The records logged for an unreadable row carry the five log fields, naming the saga."""
    await corrupt_row(store, "bad-1")
    with caplog.at_level(logging.ERROR, logger="lexigram.events.sagas"):
        assert await store.list() == []
        assert await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"]) == []
    listed, claimed = (
        {name: vars(record)[name] for name in LOG_FIELDS} for record in caplog.records
    )
    expected = {"saga_id": "bad-1", "saga_name": "orders", "step": None, "attempt": None}
    assert listed == {**expected, "worker_id": None}
    assert claimed == {**expected, "worker_id": "w1"}


# ---------------------------------------------------------------------- durability


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    """A record saved, then the store closed and opened again, loads back equal."""
    record = full_record("s-1")
    async with SQLiteSagaStore(db_path) as store:
        await store.save(record)
    async with SQLiteSagaStore(db_path) as reopened:
        loaded = await reopened.load("s-1")
    assert loaded is not None
    assert same_fields(loaded, record)
    assert loaded.version == 1


async def test_lease_changes_are_visible_after_reopen(db_path: Path) -> None:
    """A claim's lease (kept in columns) is what a reopened store loads."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("s-1"))
        [claimed] = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
    async with SQLiteSagaStore(db_path) as reopened:
        loaded = await reopened.load("s-1")
    assert loaded is not None
    assert same_fields(loaded, claimed)
    assert loaded.version == claimed.version == 2


async def test_second_store_on_the_same_file_sees_committed_writes(db_path: Path) -> None:
    """What one store's save committed, another connection to the file reads."""
    async with SQLiteSagaStore(db_path) as writer, SQLiteSagaStore(db_path) as reader:
        await writer.save(make_record("s-1"))
        loaded = await reader.load("s-1")
    assert loaded is not None
    assert loaded.version == 1


async def test_list_by_status_uses_both_kinds_of_status(store: SagaStore) -> None:
    """list(status=...) finds active and terminal sagas alike (they use different indexes)."""
    await store.save(make_record("p", status=SagaStatus.PENDING))
    await store.save(make_record("c", status=SagaStatus.COMPLETED))
    assert [r.saga_id for r in await store.list(status=SagaStatus.PENDING)] == ["p"]
    assert [r.saga_id for r in await store.list(status=SagaStatus.COMPLETED)] == ["c"]
    assert await store.list(status=SagaStatus.FAILED) == []


async def test_lone_surrogate_escaped_by_an_earlier_version_still_loads(
    store: SagaStore,
) -> None:
    """A row an earlier version wrote with an escaped lone surrogate reads back as it was."""
    assert isinstance(store, SQLiteSagaStore)
    await store.save(make_record("s-1", data={"ok": "é"}))
    with raw(store.path) as conn:
        [(doc,)] = conn.execute("SELECT doc FROM lexigram_sagas").fetchall()
        conn.execute("UPDATE lexigram_sagas SET doc = ?", (doc.replace("é", "a\\ud800b"),))
    loaded = await store.load("s-1")
    assert loaded is not None
    assert loaded.data == {"ok": "a\ud800b"}


async def test_in_memory_database_works(tmp_path: Path) -> None:
    """``:memory:`` gives a working, private store."""
    async with SQLiteSagaStore(":memory:") as store:
        await store.save(make_record("s-1"))
        assert [r.saga_id for r in await store.list()] == ["s-1"]


async def test_injected_clock_judges_leases(db_path: Path) -> None:
    """Lease expiry follows the store's clock."""
    clock = ManualClock(BASE_TIME)
    async with SQLiteSagaStore(db_path, clock=clock) as store:
        await store.save(make_record("s-1"))
        await store.claim("w1", "l1", lease_seconds=10, saga_names=["orders"])
        assert await store.claim("w2", "l2", lease_seconds=10, saga_names=["orders"]) == []
        clock.advance(11)
        claimed = await store.claim("w2", "l2", lease_seconds=10, saga_names=["orders"])
    assert [r.lease_expires_at for r in claimed] == [BASE_TIME + timedelta(seconds=21)]


# ---------------------------------------------------------------------- errors


async def test_lock_held_too_long_is_unavailable(db_path: Path) -> None:
    """A write blocked by another connection's lock past busy_timeout is unavailable."""
    async with SQLiteSagaStore(db_path, busy_timeout=0.05) as store:
        await store.save(make_record("s-1"))
        blocker = sqlite3.connect(db_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(SagaStoreUnavailableError, match="locked"):
                await store.save(make_record("s-2"))
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        await store.save(make_record("s-2"))
        assert await store.load("s-2") is not None


async def test_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    """A path in a missing directory makes operations raise SagaStoreUnavailableError."""
    async with SQLiteSagaStore(tmp_path / "missing" / "sagas.db") as store:
        with pytest.raises(SagaStoreUnavailableError):
            await store.load("s-1")


async def test_operations_after_close_raise(db_path: Path) -> None:
    """A closed store refuses operations with SagaStoreError."""
    store = SQLiteSagaStore(db_path)
    await store.save(make_record("s-1"))
    await store.close()
    with pytest.raises(SagaStoreError, match="closed"):
        await store.load("s-1")


def test_missing_sqlite3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the sqlite3 module, importing the store names the extra to install."""
    for name in list(sys.modules):
        if name.startswith(("lexigram.events.sagas.sqlite", "lexigram.events.sagas._sqlite")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sqlite3", None)
    with pytest.raises(ImportError, match=r"lexigram-events\[sqlite\]"):
        importlib.import_module("lexigram.events.sagas.sqlite")


# ---------------------------------------------------------------------- group commit


async def _queue_behind_a_gate(store: SQLiteSagaStore, operations: list[Any]) -> list[Any]:
    """Hold the store's thread until every operation is queued; return their outcomes."""
    entered, gate = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    blocked = store._submit(hold, write=False)
    assert entered.wait(10)  # the thread is inside `hold`: nothing else can start
    tasks = [asyncio.ensure_future(operation) for operation in operations]
    await asyncio.sleep(0)  # every task runs up to its queued operation
    gate.set()
    await blocked
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_saves_share_one_commit(store: SagaStore) -> None:
    """100 saves queued together are committed by one transaction."""
    assert isinstance(store, SQLiteSagaStore)
    await store.load("warm-up")
    outcomes = await _queue_behind_a_gate(
        store, [store.save(make_record(f"s-{n}")) for n in range(100)]
    )
    assert outcomes == [None] * 100
    assert (store.writes, store.commits) == (100, 1)
    assert len(await store.list(limit=1000)) == 100


async def test_a_conflict_does_not_abort_the_rest_of_its_group(store: SagaStore) -> None:
    """In one group commit, a conflicting save fails alone; the others are committed."""
    assert isinstance(store, SQLiteSagaStore)
    await store.save(make_record("taken"))
    outcomes = await _queue_behind_a_gate(
        store,
        [
            store.save(make_record("a")),
            store.save(make_record("taken")),
            store.save(make_record("b")),
        ],
    )
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], ConcurrencyConflictError)
    assert (store.writes, store.commits) == (3, 2)
    assert {r.saga_id for r in await store.list()} == {"taken", "a", "b"}


async def test_a_lost_transaction_fails_its_whole_group(store: SagaStore) -> None:
    """When SQLite aborts a group's transaction, each of its writes is reported unavailable."""
    assert isinstance(store, SQLiteSagaStore)

    def abort(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # as SQLite does itself on some I/O errors
        raise sqlite3.OperationalError("disk I/O error")

    async def aborting_write() -> None:
        await store._submit(abort, write=True)

    await store.load("warm-up")
    outcomes = await _queue_behind_a_gate(
        store, [store.save(make_record("a")), aborting_write(), store.save(make_record("b"))]
    )
    assert [type(outcome) for outcome in outcomes] == [SagaStoreUnavailableError] * 3
    assert (store.writes, store.commits) == (0, 0)
    assert await store.list() == []
    await store.save(make_record("c"))
    assert [r.saga_id for r in await store.list()] == ["c"]


async def test_concurrent_engine_writes_share_commits(db_path: Path) -> None:
    """100 sagas run at once by a SagaManager cost far fewer commits than writes."""
    # Debug mode slows the loop (not the store's thread) several times over, so writes
    # reach the thread too slowly to queue up behind a commit: measure at normal speed.
    asyncio.get_running_loop().set_debug(False)
    async with SQLiteSagaStore(db_path) as store:
        async with SagaManager(store) as manager:
            manager.register(ThreeSteps)
            records = await asyncio.gather(
                *(manager.execute("three_steps", {"n": n}) for n in range(100))
            )
        assert {r.status for r in records} == {SagaStatus.COMPLETED}
        assert store.writes == 400
        assert store.commits * 4 <= store.writes


# ---------------------------------------------------------------------- closing


async def test_close_ends_the_thread(db_path: Path) -> None:
    """close() stops the store's thread and is idempotent."""
    before = set(threading.enumerate())
    store = SQLiteSagaStore(db_path)
    await store.save(make_record("s-1"))
    started = set(threading.enumerate()) - before
    assert [thread.name for thread in started] == ["lexigram-sqlite-lexigram_sagas"]
    await store.close()
    await store.close()
    assert not any(thread.is_alive() for thread in started)


async def test_unclosed_store_warns_and_stops_its_thread(db_path: Path) -> None:
    """A store dropped without close() warns (ResourceWarning) and its thread ends."""
    store = SQLiteSagaStore(db_path, table="dropped")
    await store.save(make_record("s-1"))
    [thread] = [t for t in threading.enumerate() if t.name == "lexigram-sqlite-dropped"]
    with pytest.warns(ResourceWarning, match="unclosed SQLiteSagaStore"):
        del store  # the last reference: CPython finalizes it at once
    thread.join(timeout=5)
    assert not thread.is_alive()


async def test_unused_store_starts_no_thread(db_path: Path) -> None:
    """Constructing a store touches neither the file nor a thread until first use."""
    store = SQLiteSagaStore(db_path, table="idle")
    await store.close()
    assert not any(t.name == "lexigram-sqlite-idle" for t in threading.enumerate())
    assert not os.path.exists(db_path)  # noqa: ASYNC240 - a stat in a test


# ---------------------------------------------------------------------- several processes


@pytest.mark.slow
async def test_processes_opening_a_fresh_file_at_once_both_work(db_path: Path) -> None:
    """Two processes creating the schema of one new file at the same time both succeed."""
    first, second = await run_workers(
        ["insert", str(db_path), "p1", "50"], ["insert", str(db_path), "p2", "50"]
    )
    async with SQLiteSagaStore(db_path) as store:
        stored = {r.saga_id for r in await store.list(limit=1000)}
    assert stored == set(first) | set(second)
    assert len(stored) == 100


@pytest.mark.slow
async def test_processes_claiming_one_file_never_share_a_saga(db_path: Path) -> None:
    """Two OS processes claiming from one file take disjoint sets that cover every saga."""
    async with SQLiteSagaStore(db_path) as store:
        # In batches: creating 600 tasks in one go holds a debug-mode loop for ~0.3 s.
        for batch in range(0, 600, 100):
            await asyncio.gather(
                *(
                    store.save(make_record(f"s-{n:03}", created_at=BASE_TIME))
                    for n in range(batch, batch + 100)
                )
            )
    first, second = await run_workers(
        ["claim", str(db_path), "w1", "2"], ["claim", str(db_path), "w2", "2"]
    )
    assert not set(first) & set(second)
    assert len(first) + len(second) == 600
    async with SQLiteSagaStore(db_path) as store:
        owners = {r.lease_owner for r in await store.list(limit=1000)}
    assert owners <= {"w1", "w2"}


@pytest.mark.slow
async def test_every_returned_save_survives_a_killed_process(db_path: Path) -> None:
    """Each save that returned in a process killed with SIGKILL is in the file after."""
    proc = await spawn(["crash", str(db_path), "k", "200"])
    out, err = await proc.communicate(b"go\n")
    assert proc.returncode == -signal.SIGKILL, err.decode()
    saved = [json.loads(line) for line in out.decode().splitlines()[1:]]
    assert len(saved) == 100
    async with SQLiteSagaStore(db_path) as store:
        stored = {record.saga_id for record in await store.list(limit=1000)}
    assert stored >= set(saved)


async def test_two_stores_claiming_one_file_never_share_a_saga(db_path: Path) -> None:
    """Two stores (two connections) in one process race over claims without overlap."""
    async with SQLiteSagaStore(db_path) as first, SQLiteSagaStore(db_path) as second:
        for index in range(60):
            await first.save(make_record(f"s-{index:02}"))
        batches = await asyncio.gather(
            *(
                store.claim(f"w{n}", f"l{n}", lease_seconds=30, saga_names=["orders"], limit=4)
                for n in range(16)
                for store in (first, second)
            )
        )
    ids = [record.saga_id for batch in batches for record in batch]
    assert len(ids) == len(set(ids)) == 60


# ---------------------------------------------------------------------- with the engine


async def test_manager_runs_a_saga_durably(db_path: Path) -> None:
    """A saga run by SagaManager on SQLite loads back completed from a reopened store."""
    async with SQLiteSagaStore(db_path) as store:
        async with SagaManager(store) as manager:
            manager.register(ThreeSteps)
            record = await manager.execute("three_steps", {"n": 7})
        assert (store.writes, store.commits) == (4, 4)
    async with SQLiteSagaStore(db_path) as reopened:
        loaded = await reopened.load(record.saga_id)
    assert loaded is not None
    assert loaded.status is SagaStatus.COMPLETED
    assert loaded.data == {"n": 7, "reserved": True, "confirmed": True}
    assert loaded.step_statuses() == {
        "reserve": SagaStepStatus.COMPLETED,
        "charge": SagaStepStatus.COMPLETED,
        "confirm": SagaStepStatus.COMPLETED,
    }
    assert loaded.steps["charge"].output == {"charged": 7}
    assert loaded.lease_owner is None
    assert loaded.version == record.version == 4


async def test_recover_runs_every_saga_around_a_misfiled_row(db_path: Path) -> None:
    """A row whose document names another saga never strands the batch recover() claims."""
    now = datetime.now(UTC)
    async with SQLiteSagaStore(db_path) as store:
        for offset, saga_id in [(-1, "first"), (1, "last")]:
            created = now + timedelta(seconds=offset)
            await store.save(
                SagaRecord(
                    saga_id,
                    "three_steps",
                    SagaStatus.PENDING,
                    data={"n": 1},
                    created_at=created,
                    updated_at=created,
                    metadata={"correlation_id": saga_id},
                    deadline_at=created + timedelta(minutes=5),
                )
            )
        misfiled = make_record("misfiled", saga_name="unregistered", created_at=now)
        with raw(db_path) as conn:
            conn.execute(
                "INSERT INTO lexigram_sagas (saga_id, saga_name, status, version, "
                "created_at_us, recovery_attempts, doc) "
                "VALUES ('misfiled', 'three_steps', 'running', 1, ?, 0, ?)",
                (to_us(now), encode_record(misfiled)),
            )
        async with SagaManager(store, worker_id="w1") as manager:
            manager.register(ThreeSteps)
            assert await manager.recover() == 2
            done = [await manager.wait(saga_id, timeout=30) for saga_id in ("first", "last")]
        assert [record.status for record in done] == [SagaStatus.COMPLETED] * 2
        with pytest.raises(CorruptRecordError) as caught:
            await store.load("misfiled")
        assert caught.value.field == "saga_name"
        with raw(db_path) as conn:
            owner = conn.execute(
                "SELECT lease_owner FROM lexigram_sagas WHERE saga_id = 'misfiled'"
            ).fetchone()
        assert owner == (None,)


# ---------------------------------------------------------------------- operators' reads


def correlation_column(path: str | Path, saga_id: str) -> Any:
    with raw(path) as conn:
        (value,) = conn.execute(
            "SELECT correlation_id FROM lexigram_sagas WHERE saga_id = ?", (saga_id,)
        ).fetchone()
    return value


async def traced_saves(store: SQLiteSagaStore, record: SagaRecord) -> list[str]:
    """Save ``record``; return the first word of each data statement the save ran."""
    statements: list[str] = []

    def trace(conn: sqlite3.Connection, on: bool) -> None:
        conn.set_trace_callback(statements.append if on else None)

    await run_on_thread(store, trace, True)
    try:
        await store.save(record)
    finally:
        await run_on_thread(store, trace, False)
    return [s.split()[0] for s in statements if not s.startswith(("BEGIN", "COMMIT"))]


@pytest.mark.parametrize("own", [True, False], ids=["saga-id", "caller-id"])
async def test_saves_keep_the_correlation_column_in_one_statement(
    db_path: Path, *, own: bool
) -> None:
    """Inserts write the column; updates that keep the id run one statement, as before."""
    record = make_record("s-1")
    record.metadata["correlation_id"] = "s-1" if own else "order-7"
    async with SQLiteSagaStore(db_path) as store:
        await store.load("warm-up")
        assert await traced_saves(store, record) == ["INSERT"]
        assert correlation_column(db_path, "s-1") == record.correlation_id
        assert await traced_saves(store, record) == ["UPDATE"]
        assert correlation_column(db_path, "s-1") == record.correlation_id


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, "order-7"), ("order-7", "order-8"), ("order-7", None), ("order-7", 42)],
    ids=["set", "changed", "removed", "not-text"],
)
async def test_a_step_changing_the_correlation_id_rewrites_the_column(
    store: SagaStore, before: str | None, after: object
) -> None:
    """The save after ``ctx.metadata["correlation_id"]`` changed stores the new id."""
    assert isinstance(store, SQLiteSagaStore)
    record = make_record("s-1")
    record.metadata = {} if before is None else {"correlation_id": before}
    await store.save(record)
    record.metadata = {} if after is None else {"correlation_id": after}
    assert await traced_saves(store, record) == ["UPDATE", "UPDATE"]
    now = record.correlation_id
    assert now == (after if isinstance(after, str) else "s-1")
    assert correlation_column(store.path, "s-1") == now
    assert [r.saga_id for r in await store.list(correlation_id=now)] == ["s-1"]
    assert await store.list(correlation_id=before or "s-1") == []
    assert await traced_saves(store, record) == ["UPDATE"]  # the id is stored now


async def test_a_stale_save_of_a_new_correlation_id_is_a_conflict(store: SagaStore) -> None:
    """Neither form of the update writes a row at another version."""
    assert isinstance(store, SQLiteSagaStore)
    record = make_record("s-1")
    await store.save(record)
    stale = await store.load("s-1")
    assert stale is not None
    await store.save(record)
    stale.metadata["correlation_id"] = "order-9"
    with pytest.raises(ConcurrencyConflictError) as caught:
        await store.save(stale)
    assert (caught.value.expected_version, caught.value.actual_version) == (1, 2)
    assert correlation_column(store.path, "s-1") == "corr-s-1"


async def test_a_row_without_the_column_is_mended_by_its_next_save(store: SagaStore) -> None:
    """A saga an older version inserted (no column) is listed once this version saves it."""
    assert isinstance(store, SQLiteSagaStore)
    record = make_record("s-1")
    await store.save(record)
    with raw(store.path) as conn:
        conn.execute("UPDATE lexigram_sagas SET correlation_id = NULL")
    assert await store.list(correlation_id="corr-s-1") == []
    await store.save(record)
    assert [r.saga_id for r in await store.list(correlation_id="corr-s-1")] == ["s-1"]


async def test_correlation_ids_with_nul_and_unicode_are_found_exactly(store: SagaStore) -> None:
    """The column holds any text: a NUL inside an id is compared, never cut at."""
    for saga_id, correlation_id in [("s-1", "a\x00b"), ("s-2", "a"), ("s-3", "ordre-é😀")]:
        record = make_record(saga_id)
        record.metadata["correlation_id"] = correlation_id
        await store.save(record)
    assert [r.saga_id for r in await store.list(correlation_id="a\x00b")] == ["s-1"]
    assert [r.saga_id for r in await store.list(correlation_id="a")] == ["s-2"]
    assert [r.saga_id for r in await store.list(correlation_id="ordre-é😀")] == ["s-3"]


async def test_a_correlation_id_that_is_no_text_is_found_in_the_records(store: SagaStore) -> None:
    """An earlier version's lone surrogate id (column ``NULL``) is matched by reading rows."""
    assert isinstance(store, SQLiteSagaStore)
    for index in range(4):
        await store.save(make_record(f"s-{index}", created_at=BASE_TIME + timedelta(index)))
    with raw(store.path) as conn:
        for saga_id in ("s-0", "s-1", "s-2"):  # as the migration leaves them
            (doc,) = conn.execute(
                "SELECT doc FROM lexigram_sagas WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            conn.execute(
                "UPDATE lexigram_sagas SET doc = ?, correlation_id = NULL WHERE saga_id = ?",
                (doc.replace(f'"corr-{saga_id}"', '"x\\ud800"'), saga_id),
            )
        conn.execute("UPDATE lexigram_sagas SET correlation_id = NULL WHERE saga_id = 's-3'")
    found = await store.list(correlation_id="x\ud800")
    assert [r.saga_id for r in found] == ["s-2", "s-1", "s-0"]
    paged = await store.list(correlation_id="x\ud800", limit=1, offset=1)
    assert [r.saga_id for r in paged] == ["s-1"]
    assert await store.list(correlation_id="\ud800") == []


async def test_offset_counts_unreadable_rows_so_no_saga_is_left_out(
    store: SagaStore, corrupt_row: CorruptRow
) -> None:
    """Pages past an unreadable row may repeat a saga (as on PostgreSQL), never skip one."""
    assert isinstance(store, SQLiteSagaStore)
    for index in range(4):
        await store.save(make_record(f"s-{index}", created_at=BASE_TIME + timedelta(hours=index)))
    await corrupt_row(store, "bad")
    with raw(store.path) as conn:  # between s-1 and s-2
        conn.execute(
            "UPDATE lexigram_sagas SET created_at_us = ? WHERE saga_id = 'bad'",
            (to_us(BASE_TIME + timedelta(minutes=90)),),
        )
    pages = [[r.saga_id for r in await store.list(limit=2, offset=offset)] for offset in (0, 2, 4)]
    assert pages == [["s-3", "s-2"], ["s-1", "s-0"], ["s-0"]]


async def test_a_saga_without_a_creation_time_is_listed_as_of_the_epoch(
    store: SagaStore,
) -> None:
    """``created_at=None`` is ordered and filtered as the epoch, as the other stores do."""
    undated = make_record("undated")
    undated.created_at = None
    await store.save(undated)
    await store.save(make_record("dated"))
    assert [r.saga_id for r in await store.list()] == ["dated", "undated"]
    assert [r.saga_id for r in await store.list(created_before=BASE_TIME)] == ["undated"]
    later = await store.list(created_after=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert [r.saga_id for r in later] == ["dated"]


@pytest.mark.parametrize(
    ("filters", "error"),
    [
        ({"correlation_id": 7}, "correlation_id must be a str"),
        ({"created_after": datetime(2026, 1, 1)}, "created_after must be a timezone"),  # noqa: DTZ001
        ({"created_before": "2026-01-01"}, "created_before must be a timezone"),
        ({"waiting": "yes"}, "waiting must be a bool"),
    ],
)
async def test_bad_filters_are_refused_naming_themselves(
    store: SagaStore, filters: dict[str, Any], error: str
) -> None:
    """A filter of the wrong type is a ``TypeError`` naming it, before any SQL runs."""
    with pytest.raises(TypeError, match=error):
        await store.list(**filters)


async def test_counts_skip_a_status_edited_by_hand(store: SagaStore) -> None:
    """A row whose status is no saga status is counted nowhere (and breaks nothing)."""
    assert isinstance(store, SQLiteSagaStore)
    await store.save(make_record("s-1"))
    await store.save(make_record("s-2"))
    with raw(store.path) as conn:
        conn.execute("UPDATE lexigram_sagas SET status = 'bogus' WHERE saga_id = 's-2'")
    counts = await store.counts()
    assert (counts["running"], sum(counts.values())) == (1, 1)


async def test_listing_filters_read_their_indexes(store: SagaStore) -> None:
    """Each operators' filter reads an index in creation order: no scan, no sort."""
    assert isinstance(store, SQLiteSagaStore)
    await store.load("create-the-schema")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    none: dict[str, Any] = dict.fromkeys(
        ("saga_name", "status", "waiting", "correlation_id", "created_after", "created_before")
    )
    cases = {
        "correlation_id=?": {**none, "correlation_id": "c"},
        "correlation_id=? AND created_at_us>? AND created_at_us<?": {
            **none,
            "saga_name": "orders",
            "status": SagaStatus.RUNNING,
            "waiting": True,
            "correlation_id": "c",
            "created_after": at,
            "created_before": at,
        },
        "created_at_us>? AND created_at_us<?": {**none, "created_after": at, "created_before": at},
        "saga_name=? AND created_at_us>?": {**none, "saga_name": "orders", "created_after": at},
    }
    with raw(store.path) as conn:
        for searched, filters in cases.items():
            query = store._reads.query(**filters)
            plan = " / ".join(
                row[3]
                for row in conn.execute(
                    "EXPLAIN QUERY PLAN " + query.statement, (*query.params, 10, 0)
                )
            )
            assert plan.startswith("SEARCH lexigram_sagas USING INDEX"), plan
            assert plan.endswith(f"({searched})"), plan
            assert "TEMP B-TREE" not in plan
        by_name = store._reads.counts("orders")
        plan = " / ".join(
            row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + by_name.statement, ("o",))
        )
    assert plan.startswith("SEARCH lexigram_sagas USING INDEX lexigram_sagas_name (saga_name=?)")
