"""SQLiteSagaStore's service primitives, beyond the conformance suite.

Schema migrations from 1, claims that stay cheap, cancel requests, and ``wait_for_work``
across processes (durable waits and the migration from schema 2: ``test_sqlite_waits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas import SagaRecord, SagaStatus, SagaStoreError
from lexigram.events.sagas.codec import encode_record
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.testing.contract import BASE_TIME, make_record
from tests.support.sqlite_worker import run_workers


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


async def on_thread(store: SQLiteSagaStore, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(connection, *args)`` on the store's thread (as a read)."""
    return await store._submit(fn, *args, write=False)


async def claim(
    store: SQLiteSagaStore, owner: str = "w1", lease_id: str = "l1", **kw: Any
) -> list[str]:
    claimed = await store.claim(owner, lease_id, lease_seconds=30, saga_names=["orders"], **kw)
    return [record.saga_id for record in claimed]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


# ---------------------------------------------------------------------- schema 1 -> 3

# The layout of schema version 1, as the first release created it.
V1_DDL = """
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
    doc TEXT NOT NULL
);
CREATE INDEX "lexigram_sagas_active" ON "lexigram_sagas" (created_at_us, saga_id)
    WHERE status IN ('pending', 'running', 'compensating');
CREATE INDEX "lexigram_sagas_created" ON "lexigram_sagas" (created_at_us, saga_id);
CREATE INDEX "lexigram_sagas_name" ON "lexigram_sagas" (saga_name, created_at_us, saga_id);
CREATE INDEX "lexigram_sagas_completed" ON "lexigram_sagas" (completed_at_us)
    WHERE completed_at_us IS NOT NULL;
CREATE TABLE "lexigram_sagas_meta" (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
INSERT INTO "lexigram_sagas_meta" (key, value) VALUES ('schema_version', '1');
"""


def v1_document(record: SagaRecord) -> str:
    """The document as schema 1 wrote it: without the fields added since."""
    data = json.loads(encode_record(record))
    for key in ("not_before", "cancel_requested_at", "cancel_reason", "redrives"):
        data.pop(key, None)  # the codec leaves out the fields at their defaults
    return json.dumps(data)


def make_v1_file(path: Path, *records: SagaRecord) -> None:
    """A file left by schema 1, holding ``records`` as it stored them."""
    with raw(path) as conn:
        conn.executescript(V1_DDL)
        conn.executemany(
            "INSERT INTO lexigram_sagas (saga_id, saga_name, status, version, created_at_us, "
            "lease_owner, lease_id, lease_expires_at_us, recovery_attempts, doc) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, ?, 0, ?)",
            [
                (
                    r.saga_id,
                    r.saga_name,
                    r.status.value,
                    to_us(r.created_at),
                    r.lease_owner,
                    r.lease_id,
                    to_us(r.lease_expires_at),
                    v1_document(r),
                )
                for r in records
            ],
        )


def schema_of(path: Path) -> tuple[str, set[str], set[str]]:
    """The stored schema version, the table's columns and its index names."""
    with raw(path) as conn:
        (version,) = conn.execute(
            "SELECT value FROM lexigram_sagas_meta WHERE key = 'schema_version'"
        ).fetchone()
        columns = {row[1] for row in conn.execute('PRAGMA table_info("lexigram_sagas")')}
        indexes = {row[1] for row in conn.execute('PRAGMA index_list("lexigram_sagas")')}
    return version, columns, indexes


async def test_a_schema_1_table_is_migrated_and_its_rows_stay_readable(db_path: Path) -> None:
    """Opening a v1 file adds the columns, indexes and tables of 2 and 3; its rows load."""
    old = make_record("old-1", status=SagaStatus.RUNNING, data={"k": "v"})
    done = make_record("old-done", status=SagaStatus.COMPLETED)
    make_v1_file(db_path, old, done)
    async with SQLiteSagaStore(db_path) as store:
        loaded = await store.load("old-1")
        assert loaded is not None
        assert (loaded.data, loaded.version, loaded.not_before) == ({"k": "v"}, 1, None)
        assert (loaded.cancel_requested_at, loaded.cancel_reason, loaded.redrives) == (
            None,
            None,
            0,
        )
        version, columns, indexes = schema_of(db_path)
        assert version == "3"
        assert {
            "not_before_us",
            "cancel_requested_at_us",
            "cancel_reason",
            "waiting_kind",
            "waiting_signal",
        } <= columns
        assert {
            f"lexigram_sagas_{name}"
            for name in ("live", "queued", "scheduled", "expiry", "holder", "cancels", "parked")
        } <= indexes
        assert "lexigram_sagas_active" not in indexes  # replaced by _live
        # the new features, on the old rows
        assert await claim(store, exclude={"old-1"}) == []
        assert await claim(store) == ["old-1"]
        asked = await store.request_cancel("old-1", "stop")
        assert asked is not None
        assert asked.cancel_reason == "stop"
        assert await store.cancel_requests("w1", "l1") == {"old-1": "stop"}
        finished = await store.request_cancel("old-done", "too late")
        assert finished is not None
        assert finished.cancel_requested_at is None
        later = make_record("new-1", status=SagaStatus.PENDING)
        later.not_before = datetime.now(UTC) + timedelta(hours=1)
        await store.save(later)
        assert await claim(store, "w2", "l2") == []
    async with SQLiteSagaStore(db_path) as reopened:  # migrating again is a no-op
        again = await reopened.load("old-1")
        assert again is not None
        assert again.cancel_reason == "stop"
        assert await reopened.send_signal("old-1", "approval", {}, "sig-1")
        assert schema_of(db_path)[0] == "3"


async def test_a_failed_migration_leaves_the_schema_1_table_as_it_was(db_path: Path) -> None:
    """The migration is one transaction: when it fails, nothing of it remains."""
    make_v1_file(db_path, make_record("old-1"))
    with raw(db_path) as conn:  # makes the migration's CREATE INDEX fail
        conn.execute('CREATE TABLE "lexigram_sagas_holder" (x INTEGER)')
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(SagaStoreError):
            await store.load("old-1")
    version, columns, _ = schema_of(db_path)
    assert version == "1"
    assert "not_before_us" not in columns


@pytest.mark.slow
async def test_processes_migrating_one_file_at_once_both_work(db_path: Path) -> None:
    """Two processes opening a v1 file at the same instant: one migrates, both write."""
    make_v1_file(db_path, make_record("old-1"))
    first, second = await run_workers(
        ["insert", str(db_path), "p1", "20"], ["insert", str(db_path), "p2", "20"]
    )
    async with SQLiteSagaStore(db_path) as store:
        stored = {r.saga_id for r in await store.list(limit=1000)}
    assert stored == {"old-1", *first, *second}
    assert schema_of(db_path)[0] == "3"


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    """A file of a schema version this code does not know is never migrated or written."""
    make_v1_file(db_path, make_record("old-1"))
    with raw(db_path) as conn:
        conn.execute("UPDATE lexigram_sagas_meta SET value = '4'")
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(SagaStoreError, match="schema version 4"):
            await store.load("old-1")
    assert "not_before_us" not in schema_of(db_path)[1]


# ---------------------------------------------------------------------- claims


async def test_due_times_follow_the_stores_clock(db_path: Path) -> None:
    """``not_before`` is judged by the injected clock; creation ahead of it is no delay."""
    clock = ManualClock(BASE_TIME)
    async with SQLiteSagaStore(db_path, clock=clock) as store:
        later = make_record("later", status=SagaStatus.PENDING)
        later.not_before = BASE_TIME + timedelta(seconds=10)
        await store.save(later)
        await store.save(make_record("skewed", created_at=BASE_TIME + timedelta(hours=1)))
        assert await claim(store) == ["skewed"]
        assert await claim(store, saga_id="later") == []
        clock.advance(10)
        assert await claim(store, saga_id="later") == ["later"]


async def test_claim_by_id_honours_exclude(db_path: Path) -> None:
    """A single-saga claim passes over an excluded id too."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("s-1"))
        assert await claim(store, saga_id="s-1", exclude=["s-1"]) == []
        assert await claim(store, saga_id="s-1", exclude=["s-2"]) == ["s-1"]


@pytest.mark.parametrize("old_lease", ["a-lease", "z-lease", None])
async def test_an_earlier_incarnation_is_found_on_either_side_of_the_lease_id(
    db_path: Path, old_lease: str | None
) -> None:
    """The holder index is read in two ranges around the claimer's lease id (and NULL)."""
    live = datetime.now(UTC) + timedelta(minutes=5)
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("old", owner="w1", lease_id=old_lease, lease_expires_at=live))
        await store.save(make_record("mine", owner="w1", lease_id="m-lease", lease_expires_at=live))
        await store.save(make_record("other", owner="w2", lease_id="x", lease_expires_at=live))
        assert await claim(store, "w1", "m-lease") == ["old"]


async def test_claim_merges_every_kind_of_candidate_oldest_first(db_path: Path) -> None:
    """Free, due, expired, unexpiring and earlier-incarnation sagas come in one order."""
    now = datetime.now(UTC)
    past, live = now - timedelta(seconds=1), now + timedelta(minutes=5)
    async with SQLiteSagaStore(db_path) as store:

        async def put(saga_id: str, minute: int, **kw: Any) -> SagaRecord:
            record = make_record(saga_id, created_at=BASE_TIME + timedelta(minutes=minute), **kw)
            await store.save(record)
            return record

        await put("e-expired", 5, owner="dead", lease_id="x", lease_expires_at=past)
        await put("c-no-expiry", 3, owner="dead", lease_id="x")
        await put("a-earlier-self", 1, owner="w1", lease_id="old", lease_expires_at=live)
        await put("d-free", 4)
        due = make_record("b-due", created_at=BASE_TIME + timedelta(minutes=9))
        due.not_before = BASE_TIME + timedelta(minutes=2)
        await store.save(due)
        await put("f-live", 0, owner="w2", lease_id="y", lease_expires_at=live)
        await put("g-finished", 0, status=SagaStatus.COMPLETED)
        await put("h-other-name", 0, saga_name="invoices")
        assert await claim(store, limit=3) == ["a-earlier-self", "b-due", "c-no-expiry"]
        assert await claim(store, "w3", "l3") == ["d-free", "e-expired"]


async def test_claim_of_several_names(db_path: Path) -> None:
    """Each name has its own arms; the result is still one order."""
    async with SQLiteSagaStore(db_path) as store:
        for minute, name in enumerate(["b", "a", "b", "c"]):
            created = BASE_TIME + timedelta(minutes=minute)
            await store.save(make_record(f"{name}-{minute}", saga_name=name, created_at=created))
        claimed = await store.claim("w1", "l1", lease_seconds=30, saga_names=["a", "b"])
    assert [r.saga_id for r in claimed] == ["b-0", "a-1", "b-2"]


async def test_claim_of_hundreds_of_names(db_path: Path) -> None:
    """Past 64 names the free sagas are read in one arm (a compound SELECT has 500 at most)."""
    names = [f"name-{index:03}" for index in range(300)]
    async with SQLiteSagaStore(db_path) as store:
        for index in (299, 7, 150):
            created = BASE_TIME - timedelta(minutes=index)
            await store.save(make_record(f"s-{index}", saga_name=names[index], created_at=created))
        claimed = await store.claim("w1", "l1", lease_seconds=30, saga_names=names, limit=2)
    assert [r.saga_id for r in claimed] == ["s-299", "s-150"]


async def test_bad_exclude_is_refused(db_path: Path) -> None:
    """``exclude`` must be a collection of ids: a lone str or non-str ids raise TypeError."""
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(TypeError, match="exclude"):
            await claim(store, exclude="s-1")
        with pytest.raises(TypeError, match="exclude"):
            await claim(store, exclude=[1])


def fill(path: Path, *, held: int, finished: int, free: int) -> None:
    """Write rows straight into the file.

    ``held`` under live leases (half of them by the claimer itself), ``finished``
    completed, ``free`` claimable.
    """
    live = to_us(datetime.now(UTC) + timedelta(hours=1))
    created = to_us(BASE_TIME)
    doc = encode_record(make_record("template"))  # never read: the claim must not touch these
    rows = [
        (f"h-{n}", "running", "w1" if n % 2 else "w2", "l1" if n % 2 else "l2", live, doc)
        for n in range(held)
    ] + [(f"f-{n}", "completed", None, None, None, doc) for n in range(finished)]
    with raw(path) as conn:
        conn.executemany(
            "INSERT INTO lexigram_sagas (saga_id, saga_name, status, version, created_at_us, "
            "lease_owner, lease_id, lease_expires_at_us, doc, completed_at_us) "
            "VALUES (?, 'orders', ?, 1, ?, ?, ?, ?, ?, NULL)",
            [(saga_id, status, created, *rest) for saga_id, status, *rest in rows],
        )
        for n in range(free):
            record = make_record(f"free-{n}", created_at=BASE_TIME + timedelta(seconds=n))
            conn.execute(
                "INSERT INTO lexigram_sagas (saga_id, saga_name, status, version, "
                "created_at_us, doc) VALUES (?, 'orders', 'running', 1, ?, ?)",
                (record.saga_id, to_us(record.created_at), encode_record(record)),
            )


async def claim_cost(store: SQLiteSagaStore) -> tuple[list[str], int]:
    """Claim two sagas; return them and how many SQLite VM instructions it took (x100)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def install(conn: sqlite3.Connection, handler: Callable[[], int] | None) -> None:
        conn.set_progress_handler(handler, 100)

    await on_thread(store, install, count)
    try:
        taken = await claim(store, "w1", "l1", limit=2)
    finally:
        await on_thread(store, install, None)
    return taken, steps[0]


async def test_claim_cost_ignores_held_and_finished_sagas(tmp_path: Path) -> None:
    """10,000 sagas in flight (all leased) and 10,000 finished do not make a claim dearer."""
    costs = []
    for index, (held, finished) in enumerate([(0, 0), (10_000, 10_000)]):
        path = tmp_path / f"{index}.db"
        async with SQLiteSagaStore(path) as store:
            await store.load("create-the-schema")
            await asyncio.to_thread(fill, path, held=held, finished=finished, free=5)
            taken, cost = await claim_cost(store)
            assert taken == ["free-0", "free-1"]
            costs.append(cost)
    empty, crowded = costs
    assert crowded <= empty + 5, costs  # the same (x100 instructions): no walk of 20,000 rows


def plan_of(conn: sqlite3.Connection, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> str:
    return "\n".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


async def test_claim_and_cancel_queries_read_only_their_partial_indexes(db_path: Path) -> None:
    """EXPLAIN QUERY PLAN: every arm SEARCHes a partial index; nothing SCANs the table."""
    async with SQLiteSagaStore(db_path) as store:
        await store.load("create-the-schema")
        await asyncio.to_thread(fill, db_path, held=200, finished=200, free=5)
        names = {"n0": "orders", "n1": "invoices"}
        params = {**names, "now": 0, "owner": "w", "lease_id": "l", "excluded": "[]", "want": 5}
        sql = store._sql
        with raw(db_path) as conn:
            conn.execute("ANALYZE")  # statistics must not lure the planner elsewhere
            claim_plan = plan_of(conn, sql.select_claimable(2, one=False), params)
            one_plan = plan_of(conn, sql.select_claimable(2, one=True), {**params, "saga_id": "s"})
            cancel_plan = plan_of(conn, sql.cancel_requests, ("w", "l"))
    searches = [line for line in claim_plan.splitlines() if line.startswith("SEARCH ")]
    used = {line.split(" USING ")[1].split(" (")[0] for line in searches}
    assert used == {
        "INDEX lexigram_sagas_queued",
        "INDEX lexigram_sagas_scheduled",
        "INDEX lexigram_sagas_expiry",
        "INDEX lexigram_sagas_holder",
        "INDEX lexigram_sagas_cancels",  # scheduled sagas asked to cancel (lease_owner=NULL)
        "INDEX sqlite_autoindex_lexigram_sagas_1",  # the final read of the chosen rows
    }, claim_plan
    assert len(searches) == 2 * 2 + 1 + 5 + 1, claim_plan
    assert "SCAN lexigram_sagas" not in claim_plan
    assert "SCAN t" not in claim_plan
    assert "lease_id<?" in claim_plan  # the holder index is read in ranges...
    assert "lease_id>?" in claim_plan  # ... that skip the claimer's own sagas
    assert "lease_expires_at_us<?" in claim_plan  # only the expired end of the expiry index
    assert one_plan.startswith(
        "SEARCH lexigram_sagas USING INDEX sqlite_autoindex_lexigram_sagas_1 (saga_id=?)"
    )
    assert cancel_plan == (
        "SEARCH lexigram_sagas USING INDEX lexigram_sagas_cancels (lease_owner=? AND lease_id=?)"
    )


async def test_a_save_is_still_one_statement(db_path: Path) -> None:
    """Inserting and updating a held saga run one data statement each (the hot path)."""
    async with SQLiteSagaStore(db_path) as store:
        await store.load("warm-up")
        statements: list[str] = []

        def trace(conn: sqlite3.Connection, on: bool) -> None:
            conn.set_trace_callback(statements.append if on else None)

        await on_thread(store, trace, True)
        live = datetime.now(UTC) + timedelta(seconds=30)
        record = make_record("s-1", owner="w1", lease_id="l1", lease_expires_at=live)
        await store.save(record)
        await store.save(record)
        await on_thread(store, trace, False)
    data = [s.split()[0] for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    assert data == ["INSERT", "UPDATE"]


# ---------------------------------------------------------------------- cancel requests


async def test_request_cancel_leaves_the_document_alone(db_path: Path) -> None:
    """Only the two cancel columns change: the stored document is byte for byte the same."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("s-1"))
        with raw(db_path) as conn:
            before = conn.execute("SELECT doc, version FROM lexigram_sagas").fetchone()
        asked = await store.request_cancel("s-1", "stop ✓")
        with raw(db_path) as conn:
            after = conn.execute(
                "SELECT doc, version, cancel_reason, cancel_requested_at_us FROM lexigram_sagas"
            ).fetchone()
    assert asked is not None
    assert asked.cancel_requested_at is not None
    assert after == (*before, "stop ✓", to_us(asked.cancel_requested_at))


async def test_cancel_request_is_stamped_by_the_stores_clock(db_path: Path) -> None:
    """``cancel_requested_at`` is the store's now."""
    async with SQLiteSagaStore(db_path, clock=ManualClock(BASE_TIME)) as store:
        await store.save(make_record("s-1"))
        asked = await store.request_cancel("s-1", "stop")
    assert asked is not None
    assert asked.cancel_requested_at == BASE_TIME


async def test_a_request_on_a_corrupt_row_is_refused_and_not_stored(db_path: Path) -> None:
    """An unreadable row raises CorruptRecordError; the request is rolled back with it."""
    async with SQLiteSagaStore(db_path) as store:
        await store.save(make_record("s-1"))
        with raw(db_path) as conn:
            conn.execute("UPDATE lexigram_sagas SET doc = '{broken'")
        with pytest.raises(SagaStoreError):
            await store.request_cancel("s-1", "stop")
        with raw(db_path) as conn:
            assert conn.execute("SELECT cancel_reason FROM lexigram_sagas").fetchone() == (None,)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda s: s.request_cancel("s-1", None), "reason"),
        (lambda s: s.request_cancel(1, "stop"), "saga_id"),
        (lambda s: s.cancel_requests(None, "l1"), "owner"),
        (lambda s: s.cancel_requests("w1", 7), "lease_id"),
    ],
)
async def test_bad_arguments_name_themselves(
    db_path: Path, call: Callable[[SQLiteSagaStore], Any], argument: str
) -> None:
    """A non-str argument raises TypeError naming it, before anything is written."""
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(TypeError, match=argument):
            await call(store)


# ---------------------------------------------------------------------- wait_for_work


async def test_an_enqueue_by_another_store_object_wakes_a_waiter(db_path: Path) -> None:
    """A commit through another connection to the file is seen by polling data_version."""
    async with SQLiteSagaStore(db_path) as waiter, SQLiteSagaStore(db_path) as other:
        await waiter.load("warm-up")
        await other.load("warm-up")
        waiting = asyncio.ensure_future(waiter.wait_for_work(30))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        started = time.monotonic()
        await other.save(make_record("s-1", status=SagaStatus.PENDING))
        assert await asyncio.wait_for(waiting, timeout=5) is True
        assert time.monotonic() - started < 1.0
        assert await claim(waiter) == ["s-1"]


async def test_a_commit_between_two_waits_wakes_the_second(db_path: Path) -> None:
    """What another process committed while nobody waited wakes the next wait at once."""
    async with SQLiteSagaStore(db_path) as waiter, SQLiteSagaStore(db_path) as other:
        await other.load("warm-up")
        assert await waiter.wait_for_work(0.05) is False
        await other.save(make_record("s-1", status=SagaStatus.PENDING))
        assert await asyncio.wait_for(waiter.wait_for_work(30), timeout=5) is True


async def test_a_commit_before_the_first_wait_wakes_it(db_path: Path) -> None:
    """Another process's commit after this store opened the file counts, waited for or not."""
    async with SQLiteSagaStore(db_path) as waiter, SQLiteSagaStore(db_path) as other:
        await waiter.load("warm-up")  # opens the file: data_version is noted
        await other.save(make_record("s-1", status=SagaStatus.PENDING))
        assert await asyncio.wait_for(waiter.wait_for_work(30), timeout=5) is True


async def test_own_held_saves_do_not_wake_a_waiter(db_path: Path) -> None:
    """start()'s saves of sagas it holds are no work for anyone: the wait times out."""
    async with SQLiteSagaStore(db_path) as store:
        waiting = asyncio.ensure_future(store.wait_for_work(0.3))
        live = datetime.now(UTC) + timedelta(seconds=30)
        record = make_record("s-1", owner="w1", lease_id="l1", lease_expires_at=live)
        await store.save(record)
        await store.save(record)
        assert await waiting is False


async def test_polling_happens_only_while_someone_waits(db_path: Path) -> None:
    """The thread reads data_version about every 20 ms during a wait, and not after it."""
    async with SQLiteSagaStore(db_path) as store:
        await store.load("warm-up")
        assert store._worker.polls == 0
        assert await store.wait_for_work(0.5) is False
        during = store._worker.polls
        await asyncio.sleep(0.2)
        assert store._worker.polls == during
    assert 5 <= during <= 30


async def test_an_idle_wait_costs_little_cpu(db_path: Path) -> None:
    """Waiting 1 s with nothing happening uses well under a hundredth of a core."""
    async with SQLiteSagaStore(db_path) as store:
        await store.load("warm-up")
        started_cpu, started = time.process_time(), time.monotonic()
        assert await store.wait_for_work(1.0) is False
        cpu = time.process_time() - started_cpu
        wall = time.monotonic() - started
    assert cpu / wall < 0.02, f"{cpu / wall:.2%} of a core"


async def test_close_ends_a_wait(db_path: Path) -> None:
    """Closing the store ends waits in progress with False; later waits raise."""
    store = SQLiteSagaStore(db_path)
    waiting = asyncio.ensure_future(store.wait_for_work(30))
    await asyncio.sleep(0.05)
    await store.close()
    assert await asyncio.wait_for(waiting, timeout=5) is False
    with pytest.raises(SagaStoreError, match="closed"):
        await store.wait_for_work(1)


async def test_a_store_that_cannot_open_its_file_still_times_out(tmp_path: Path) -> None:
    """Polling an unopenable file never raises from wait_for_work: it just finds nothing."""
    async with SQLiteSagaStore(tmp_path / "missing" / "sagas.db") as store:
        assert await store.wait_for_work(0.1) is False


async def test_several_waiters_all_wake(db_path: Path) -> None:
    """One enqueue wakes every wait in progress."""
    async with SQLiteSagaStore(db_path) as store:
        waits = [asyncio.ensure_future(store.wait_for_work(30)) for _ in range(3)]
        await asyncio.sleep(0.05)
        await store.save(make_record("s-1", status=SagaStatus.PENDING))
        assert await asyncio.wait_for(asyncio.gather(*waits), timeout=5) == [True] * 3


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)],
)
async def test_bad_timeout_is_refused(db_path: Path, timeout: Any, error: type[Exception]) -> None:
    """``timeout`` must be a non-negative number of seconds."""
    async with SQLiteSagaStore(db_path) as store:
        with pytest.raises(error, match="timeout"):
            await store.wait_for_work(timeout)


ENQUEUER = """
import asyncio, sys
from datetime import UTC, datetime
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.types import SagaRecord, SagaStatus

async def main(path):
    async with SQLiteSagaStore(path) as store:
        await store.load("warm-up")
        print("ready", flush=True)
        sys.stdin.readline()
        now = datetime.now(UTC)
        await store.save(SagaRecord("from-b", "orders", SagaStatus.PENDING, created_at=now))
        print("saved", flush=True)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_an_enqueue_in_another_process_wakes_a_waiting_process(db_path: Path) -> None:
    """Process B saves an unowned saga; process A's wait_for_work(10) returns True within 3 s."""
    async with SQLiteSagaStore(db_path) as store:
        await store.load("warm-up")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ENQUEUER,
            str(db_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            assert await asyncio.wait_for(proc.stdout.readline(), timeout=30) == b"ready\n"
            started = time.monotonic()
            waiting = asyncio.ensure_future(store.wait_for_work(10))
            await asyncio.sleep(0.1)
            assert not waiting.done()  # B has not written yet: nothing to see
            proc.stdin.write(b"go\n")
            woke = await asyncio.wait_for(waiting, timeout=10)
            elapsed = time.monotonic() - started
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        assert out == b"saved\n"
        assert woke is True
        assert elapsed < 3.0, elapsed
        assert await claim(store) == ["from-b"]
