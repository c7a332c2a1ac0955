"""SQLiteSagaStore's durable waits, beyond the conformance suite.

Schema 3 and the migration from schema 2, the signals table, the columns that ``send_signal``
and ``wake`` write (and nothing else), and the indexes the new queries read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas import (
    CorruptRecordError,
    SagaNotFoundError,
    SagaRecord,
    SagaStatus,
    SagaStoreError,
)
from lexigram.events.sagas._sqlite.reads import Filters
from lexigram.events.sagas.codec import encode_record
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.testing.contract import BASE_TIME, make_record
from lexigram.events.sagas.types import SagaStepRecord, SagaWait, WaitKind


@contextlib.contextmanager
def raw(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A separate connection to the store's file, committing on success."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def to_us(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def parked(
    saga_id: str, *, signal: str | None = "approval", until: datetime | None = None
) -> SagaRecord:
    """A free running saga parked for ``signal`` (or a delay) until ``until`` (or far ahead)."""
    record = make_record(saga_id, status=SagaStatus.RUNNING)
    kind: WaitKind = "signal" if signal is not None else "delay"
    record.waiting = SagaWait("approve", kind, signal, until, BASE_TIME)
    record.not_before = until or datetime(9999, 1, 1, tzinfo=UTC)
    record.current_step = "approve"
    return record


async def claim(store: SQLiteSagaStore, **kw: Any) -> list[str]:
    claimed = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"], **kw)
    return [record.saga_id for record in claimed]


def row_of(path: Path, saga_id: str, columns: str) -> tuple[Any, ...]:
    with raw(path) as conn:
        found: tuple[Any, ...] = conn.execute(
            f"SELECT {columns} FROM lexigram_sagas WHERE saga_id = ?", (saga_id,)
        ).fetchone()
    return found


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


# ---------------------------------------------------------------------- schema 2 -> 3

# The layout of schema version 2, as the release before durable waits created it.
V2_DDL = """
CREATE TABLE "lexigram_sagas" (
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
    doc TEXT NOT NULL,
    not_before_us INTEGER,
    cancel_requested_at_us INTEGER,
    cancel_reason TEXT
);
CREATE INDEX "lexigram_sagas_created" ON "lexigram_sagas" (created_at_us, saga_id);
CREATE INDEX "lexigram_sagas_name" ON "lexigram_sagas" (saga_name, created_at_us, saga_id);
CREATE INDEX "lexigram_sagas_completed" ON "lexigram_sagas" (completed_at_us)
    WHERE completed_at_us IS NOT NULL;
CREATE INDEX "lexigram_sagas_live" ON "lexigram_sagas" (created_at_us, saga_id)
    WHERE status <> 'completed' AND status <> 'compensated' AND status <> 'failed';
CREATE INDEX "lexigram_sagas_queued" ON "lexigram_sagas" (saga_name, created_at_us, saga_id)
    WHERE lease_owner IS NULL AND status <> 'completed' AND status <> 'compensated'
    AND status <> 'failed' AND not_before_us IS NULL;
CREATE INDEX "lexigram_sagas_scheduled" ON "lexigram_sagas" (saga_name, not_before_us, saga_id)
    WHERE lease_owner IS NULL AND status <> 'completed' AND status <> 'compensated'
    AND status <> 'failed' AND not_before_us IS NOT NULL;
CREATE INDEX "lexigram_sagas_expiry" ON "lexigram_sagas" (lease_expires_at_us)
    WHERE lease_owner IS NOT NULL AND status <> 'completed' AND status <> 'compensated'
    AND status <> 'failed';
CREATE INDEX "lexigram_sagas_holder" ON "lexigram_sagas" (lease_owner, lease_id)
    WHERE lease_owner IS NOT NULL AND status <> 'completed' AND status <> 'compensated'
    AND status <> 'failed';
CREATE INDEX "lexigram_sagas_cancels" ON "lexigram_sagas" (lease_owner, lease_id)
    WHERE cancel_requested_at_us IS NOT NULL AND status <> 'completed'
    AND status <> 'compensated' AND status <> 'failed';
CREATE TABLE "lexigram_sagas_meta" (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
INSERT INTO "lexigram_sagas_meta" (key, value) VALUES ('schema_version', '2');
"""


def v2_document(record: SagaRecord) -> str:
    """The document as schema 2 wrote it: without the wait fields."""
    data = json.loads(encode_record(record))
    data.pop("waiting", None)  # the codec leaves out the fields at their defaults
    for step in data.get("steps", []):
        step.pop("signal_seq", None)
        step.pop("signal_visit", None)
    return json.dumps(data)


def make_v2_file(path: Path, *records: SagaRecord) -> None:
    """A file left by schema 2, holding ``records`` as it stored them."""
    with raw(path) as conn:
        conn.executescript(V2_DDL)
        conn.executemany(
            "INSERT INTO lexigram_sagas (saga_id, saga_name, status, version, created_at_us, "
            "completed_at_us, not_before_us, recovery_attempts, doc) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, 0, ?)",
            [
                (
                    r.saga_id,
                    r.saga_name,
                    r.status.value,
                    to_us(r.created_at),
                    to_us(r.completed_at),
                    to_us(r.not_before),
                    v2_document(r),
                )
                for r in records
            ],
        )


def schema_of(path: Path) -> tuple[str, set[str], set[str], set[str]]:
    """The stored schema version, the saga table's columns, its indexes, and the tables."""
    with raw(path) as conn:
        (version,) = conn.execute(
            "SELECT value FROM lexigram_sagas_meta WHERE key = 'schema_version'"
        ).fetchone()
        columns = {row[1] for row in conn.execute('PRAGMA table_info("lexigram_sagas")')}
        indexes = {row[1] for row in conn.execute('PRAGMA index_list("lexigram_sagas")')}
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    return version, columns, indexes, tables


async def test_a_schema_2_table_is_migrated_and_keeps_its_sagas(db_path: Path) -> None:
    """Opening a v2 file adds the wait columns, the signals table and ``_parked``; rows load."""
    old = make_record("old-1", status=SagaStatus.RUNNING, data={"k": "v"})
    old.steps["reserve"] = SagaStepRecord("reserve", output={"id": 7})
    later = make_record("old-later", created_at=BASE_TIME + timedelta(seconds=1))
    later.not_before = BASE_TIME + timedelta(days=1)
    done = make_record("old-done", status=SagaStatus.COMPLETED)
    make_v2_file(db_path, old, later, done)
    async with SQLiteSagaStore(db_path) as store:
        loaded = await store.load("old-1")
        assert loaded is not None
        assert (loaded.data, loaded.version, loaded.waiting) == ({"k": "v"}, 1, None)
        assert loaded.steps["reserve"].output == {"id": 7}
        assert loaded.steps["reserve"].signal_seq is None
        delayed = await store.load("old-later")
        assert delayed is not None
        assert delayed.not_before == BASE_TIME + timedelta(days=1)
        assert {r.saga_id for r in await store.list()} == {"old-1", "old-later", "old-done"}
        version, columns, indexes, tables = schema_of(db_path)
        assert version == "3"
        assert {"waiting_kind", "waiting_signal"} <= columns
        assert {"lexigram_sagas_parked", "lexigram_sagas_live"} <= indexes
        assert "lexigram_sagas_signals" in tables
        # the new features, on the old rows
        assert await store.list(waiting=True) == []
        assert len(await store.list(waiting=False)) == 3
        assert await store.send_signal("old-1", "approval", {"ok": True}, "sig-1")
        signal = await store.next_signal("old-1", "approval", 0)
        assert signal is not None
        assert signal.payload == {"ok": True}
        assert loaded.version == 1
        loaded.waiting = SagaWait("approve", "signal", "approval", None, BASE_TIME)
        await store.save(loaded)
        assert [r.saga_id for r in await store.list(waiting=True)] == ["old-1"]
    async with SQLiteSagaStore(db_path) as reopened:  # migrating again is a no-op
        again = await reopened.load("old-1")
        assert again is not None
        assert again.waiting is not None
        assert schema_of(db_path)[0] == "3"


async def test_a_failed_migration_leaves_the_schema_2_table_as_it_was(db_path: Path) -> None:
    """The migration is one transaction: a table in the signals table's way undoes it all."""
    make_v2_file(db_path, make_record("old-1"))
    with raw(db_path) as conn:
        conn.execute('CREATE TABLE "lexigram_sagas_signals" (x INTEGER)')
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(SagaStoreError):
            await store.load("old-1")
    version, columns, indexes, _ = schema_of(db_path)
    assert version == "2"
    assert "waiting_kind" not in columns
    assert "lexigram_sagas_parked" not in indexes


async def test_a_foreign_signals_table_is_refused_on_a_new_file(db_path: Path) -> None:
    """A table named like the signals table that the library did not create is not used."""
    with raw(db_path) as conn:
        conn.execute('CREATE TABLE "lexigram_sagas_signals" (x INTEGER)')
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(SagaStoreError, match=r"lexigram_sagas_signals.*did not create"):
            await store.load("s-1")


def correlated(saga_id: str, correlation_id: object = None) -> SagaRecord:
    """A record with ``metadata["correlation_id"]`` set (``None``: no metadata at all)."""
    record = make_record(saga_id)
    record.metadata = {} if correlation_id is None else {"correlation_id": correlation_id}
    return record


async def test_the_migration_fills_the_correlation_column_from_the_documents(
    db_path: Path,
) -> None:
    """Every old row gets ``record.correlation_id``; odd documents never fail the migration."""
    make_v2_file(
        db_path,
        correlated("plain", "order-7"),
        correlated("none"),
        correlated("number", 42),
        correlated("nul", "a\x00b"),  # JSON "\u0000": SQLite's json_extract would cut it
        correlated("control", "line\nbreak\x01"),
        correlated("surrogate", "x@"),
        correlated("blob", "order-b"),
        correlated("nan", "order-n"),
        correlated("garbage"),
        correlated("undated", "order-u"),
    )
    with raw(db_path) as conn:  # what earlier versions, or hands, may have left
        edit = "UPDATE lexigram_sagas SET doc = {} WHERE saga_id = ?"
        conn.execute(edit.format("replace(doc, 'x@', 'x\\ud800')"), ("surrogate",))
        conn.execute(edit.format("CAST(doc AS BLOB)"), ("blob",))
        conn.execute(edit.format('replace(doc, \'"v":1\', \'"v":1,"x":NaN\')'), ("nan",))
        conn.execute(edit.format("'{not json'"), ("garbage",))
        conn.execute("UPDATE lexigram_sagas SET created_at_us = NULL WHERE saga_id = 'undated'")
    async with SQLiteSagaStore(db_path) as store:
        assert [r.saga_id for r in await store.list(correlation_id="x\ud800")] == ["surrogate"]
        with raw(db_path) as conn:
            columns = dict(conn.execute("SELECT saga_id, correlation_id FROM lexigram_sagas"))
            (undated,) = conn.execute(
                "SELECT created_at_us FROM lexigram_sagas WHERE saga_id = 'undated'"
            ).fetchone()
        assert columns == {
            "plain": "order-7",
            "none": "none",
            "number": "number",
            "nul": "a\x00b",
            "control": "line\nbreak\x01",
            "surrogate": None,  # no text can hold it: list reads these rows' records
            "blob": "order-b",
            "nan": "order-n",
            "garbage": "garbage",  # unreadable anyway
            "undated": "order-u",
        }
        assert undated == 0  # ordered and filtered as the epoch
        for saga_id, correlation_id in columns.items():
            if saga_id not in ("surrogate", "garbage", "blob", "nan"):
                found = await store.list(correlation_id=correlation_id)
                assert [r.saga_id for r in found] == [saga_id]
        assert "lexigram_sagas_correlation" in schema_of(db_path)[2]


# ---------------------------------------------------------------------- columns


async def test_every_save_writes_the_wait_columns(db_path: Path) -> None:
    """The insert and each update copy ``waiting``'s kind and signal into their columns."""
    async with SQLiteSagaStore(db_path) as store:
        record = parked("s-1")
        await store.save(record)
        assert row_of(db_path, "s-1", "waiting_kind, waiting_signal") == ("signal", "approval")
        record.waiting = SagaWait("approve", "delay", None, BASE_TIME, BASE_TIME)
        await store.save(record)
        assert row_of(db_path, "s-1", "waiting_kind, waiting_signal") == ("delay", None)
        record.waiting = None
        await store.save(record)
        assert row_of(db_path, "s-1", "waiting_kind, waiting_signal") == (None, None)


async def test_a_signal_writes_only_not_before_of_the_saga(db_path: Path) -> None:
    """The document, the version and the lease columns stay byte for byte the same."""
    clock = ManualClock(BASE_TIME + timedelta(hours=1))
    columns = "doc, version, updated_at_us, lease_owner, not_before_us"
    async with SQLiteSagaStore(db_path, clock=clock) as store:
        await store.save(parked("s-1"))
        doc, version, updated, owner, _ = row_of(db_path, "s-1", columns)
        assert await store.send_signal("s-1", "approval", {}, "sig-1")
        after = row_of(db_path, "s-1", columns)
        loaded = await store.load("s-1")
    assert after == (doc, version, updated, owner, to_us(clock()))
    assert loaded is not None
    assert loaded.not_before == clock()  # the column, overlaid on the document's value


async def test_wake_writes_the_stores_now_into_not_before(db_path: Path) -> None:
    """``wake`` stamps the store's clock; the document is left alone."""
    clock = ManualClock(BASE_TIME)
    async with SQLiteSagaStore(db_path, clock=clock) as store:
        await store.save(parked("s-1"))
        (doc,) = row_of(db_path, "s-1", "doc")
        clock.advance(30)
        assert await store.wake("s-1")
        assert row_of(db_path, "s-1", "doc, not_before_us") == (doc, to_us(clock()))
        assert await claim(store) == ["s-1"]


async def test_a_signal_is_stamped_by_the_stores_clock(db_path: Path) -> None:
    """``sent_at`` is the store's now, as an aware UTC time."""
    async with SQLiteSagaStore(db_path, clock=ManualClock(BASE_TIME)) as store:
        await store.save(make_record("s-1"))
        await store.send_signal("s-1", "approval", {"n": 1}, "sig-1")
        signal = await store.next_signal("s-1", "approval", 0)
    assert signal is not None
    assert signal.sent_at == BASE_TIME
    assert signal.sent_at.tzinfo is UTC


async def test_a_signal_for_a_delayed_saga_leaves_it_asleep(db_path: Path) -> None:
    """A saga parked by a delay (no signal name) is not made due by any signal."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(parked("s-1", signal=None))
        assert await store.send_signal("s-1", "approval", {}, "sig-1")
        assert await claim(store) == []


# ---------------------------------------------------------------------- deleting


async def test_cleanup_deletes_only_the_deleted_sagas_signals(db_path: Path) -> None:
    """``delete_terminal`` takes the signals of the sagas it deletes, and no others."""
    async with SQLiteSagaStore(db_path) as store:
        for saga_id in ("done-1", "done-2", "live"):
            await store.save(make_record(saga_id))
            await store.send_signal(saga_id, "approval", {}, "sig")
        for saga_id in ("done-1", "done-2"):
            record = await store.load(saga_id)
            assert record is not None
            record.status = SagaStatus.COMPLETED
            record.completed_at = BASE_TIME
            await store.save(record)
        assert await store.delete_terminal(before=BASE_TIME + timedelta(days=1), limit=1) == 1
        with raw(db_path) as conn:
            left = conn.execute("SELECT saga_id FROM lexigram_sagas_signals ORDER BY 1").fetchall()
        assert len(left) == 2
        assert ("live",) in left
        assert await store.delete_terminal(before=BASE_TIME + timedelta(days=1)) == 1
        assert await store.delete_terminal(before=BASE_TIME + timedelta(days=1)) == 0
        with raw(db_path) as conn:
            left = conn.execute("SELECT saga_id FROM lexigram_sagas_signals").fetchall()
        assert left == [("live",)]


# ---------------------------------------------------------------------- errors


async def test_an_unreadable_signal_names_its_saga(db_path: Path) -> None:
    """A payload that is not a JSON object raises CorruptRecordError naming saga and field."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("s-1"))
        await store.send_signal("s-1", "approval", {}, "sig-1")
        with raw(db_path) as conn:
            conn.execute("UPDATE lexigram_sagas_signals SET payload = '[1, 2'")
        with pytest.raises(CorruptRecordError) as caught:
            await store.next_signal("s-1", "approval", 0)
    assert (caught.value.saga_id, caught.value.field) == ("s-1", "payload")


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda s: s.send_signal(1, "approval", {}, "sig"), "saga_id"),
        (lambda s: s.send_signal("s-1", None, {}, "sig"), "name"),
        (lambda s: s.send_signal("s-1", "approval", {}, 5), "signal_id"),
        (lambda s: s.next_signal("s-1", "approval", "0"), "after"),
        (lambda s: s.next_signal("s-1", 3, 0), "name"),
        (lambda s: s.wake(None), "saga_id"),
        (lambda s: s.list(waiting="yes"), "waiting"),
    ],
)
async def test_bad_arguments_name_themselves(
    db_path: Path, call: Callable[[SQLiteSagaStore], Any], argument: str
) -> None:
    """A wrongly typed argument raises TypeError naming it, before anything is queued."""
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(TypeError, match=argument):
            await call(store)


async def test_a_failed_send_in_a_group_commit_fails_alone(db_path: Path) -> None:
    """In one transaction, a signal to an unknown saga fails and the others are stored."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("s-1"))
        entered, gate = threading.Event(), threading.Event()

        def hold(_conn: sqlite3.Connection) -> None:
            entered.set()
            gate.wait(10)

        blocked = store._submit(hold, write=False)
        assert entered.wait(10)  # the thread is held: the sends below queue up together
        sends = [
            asyncio.ensure_future(store.send_signal(saga_id, "approval", {}, signal_id))
            for saga_id, signal_id in (("s-1", "a"), ("nope", "b"), ("s-1", "c"))
        ]
        await asyncio.sleep(0)
        commits = store.commits
        gate.set()
        await blocked
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        assert store.commits == commits + 1
        assert outcomes[0] is True
        assert outcomes[2] is True
        assert isinstance(outcomes[1], SagaNotFoundError)
        first = await store.next_signal("s-1", "approval", 0)
        assert first is not None
        second = await store.next_signal("s-1", "approval", first.seq)
        assert second is not None
        assert (first.signal_id, first.seq, second.signal_id, second.seq) == ("a", 1, "c", 2)


# ---------------------------------------------------------------------- other processes


async def test_a_signal_through_another_store_object_wakes_a_waiter(db_path: Path) -> None:
    """A signal committed through another connection is seen by polling ``data_version``."""
    async with SQLiteSagaStore(db_path) as waiter, SQLiteSagaStore(db_path) as other:
        await waiter.save(parked("s-1"))
        await other.load("warm-up")
        waiting = asyncio.ensure_future(waiter.wait_for_work(30))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        started = time.monotonic()
        assert await other.send_signal("s-1", "approval", {}, "sig-1")
        assert await asyncio.wait_for(waiting, timeout=5) is True
        assert time.monotonic() - started < 1.0
        assert await claim(waiter) == ["s-1"]


# ---------------------------------------------------------------------- query plans


def plan_of(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> str:
    return "\n".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


async def test_the_new_queries_read_their_indexes(db_path: Path) -> None:
    """``list(waiting=True)``, ``next_signal`` and the duplicate check never scan a table."""
    async with SQLiteSagaStore(db_path) as store:
        await store.load("create-the-schema")
        sql = store._sql
        parked_list = Filters(waiting=True).statement(sql.table)
        by_name = Filters(name=True, waiting=True).statement(sql.table)
        with raw(db_path) as conn:
            list_plan = plan_of(conn, parked_list, (10, 0))
            name_plan = plan_of(conn, by_name, ("orders", 10, 0))
            next_plan = plan_of(conn, sql.next_signal, ("s", "n", 0))
            sent_plan = plan_of(conn, sql.signal_sent, ("s", "sig"))
            seq_plan = plan_of(
                conn, f"SELECT max(seq) FROM {sql.signals} WHERE saga_id = ?", ("s",)
            )
    assert list_plan.startswith("SCAN lexigram_sagas USING INDEX lexigram_sagas_parked")
    assert "TEMP B-TREE" not in list_plan  # read newest first from the index itself
    assert name_plan == list_plan  # not the index of every saga of the name
    assert next_plan.startswith(
        "SEARCH lexigram_sagas_signals USING INDEX lexigram_sagas_signals_name "
        "(saga_id=? AND name=? AND seq>?)"
    )
    assert "TEMP B-TREE" not in next_plan
    assert sent_plan.startswith("SEARCH lexigram_sagas_signals USING COVERING INDEX")
    assert "SCAN" not in seq_plan


async def test_parking_a_saga_wakes_no_waiter_until_it_is_due(db_path: Path) -> None:
    """Saving a free saga parked for later is no work yet; parked but due, it is."""
    clock = ManualClock(BASE_TIME)
    async with SQLiteSagaStore(db_path, clock=clock) as store:
        waiting = asyncio.ensure_future(store.wait_for_work(0.3))
        await asyncio.sleep(0.05)
        await store.save(parked("later", until=BASE_TIME + timedelta(minutes=1)))
        assert await waiting is False
        waiting = asyncio.ensure_future(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        await store.save(parked("due", until=BASE_TIME))
        assert await asyncio.wait_for(waiting, timeout=5) is True
