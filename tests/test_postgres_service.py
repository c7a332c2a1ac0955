"""PostgresSagaStore serving workers in several processes (SPEC section 11).

What the conformance suite cannot show with one store object: signals between stores with
pools of their own (as separate processes have) and from a real second process, the life of
the listening connection (lazy, outside the pool, surviving a killed backend and an
unreachable server), the transactional enqueue, what claims and heartbeats read on a big
table, and the migration of schema version 1 and 2 tables.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lexigram.events.sagas import (
    ConcurrencyConflictError,
    SagaDataError,
    SagaStatus,
    SagaStoreError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.codec import encode_record
from lexigram.events.sagas.testing.contract import BASE_TIME, make_record, same_fields
from tests.conftest import postgres_required

try:
    import asyncpg

    from lexigram.events.sagas._postgres.listener import WorkSignal
    from lexigram.events.sagas._postgres.schema import SCHEMA_VERSION
    from lexigram.events.sagas.postgres import PostgresSagaStore
    from tests.test_postgres import drop_tables, unique_name
except ImportError:
    if postgres_required():
        raise
    pytest.skip("asyncpg is not installed (the 'postgres' extra)", allow_module_level=True)

MakeStore = Callable[..., Awaitable[PostgresSagaStore]]
QUICK = 2.0
"""Seconds within which a signal from another process must wake a waiting worker."""


@pytest.fixture
async def table(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh table name, dropped after the test."""
    name = unique_name()
    yield name
    await drop_tables(pg_dsn, name)


@pytest.fixture
async def make_store(pg_dsn: str, table: str) -> AsyncIterator[MakeStore]:
    """Build opened stores on one table, each with a pool of its own (as processes have)."""
    made: list[PostgresSagaStore] = []

    async def make(**options: Any) -> PostgresSagaStore:
        options.setdefault("table", table)
        store = PostgresSagaStore(pg_dsn, **options)
        made.append(store)
        await store.open()
        return store

    yield make
    for store in made:
        await store.close()


async def listening(store: PostgresSagaStore) -> None:
    """Wait until the store's first ``wait_for_work`` calls have opened its listener."""
    async with asyncio.timeout(10):
        while not store._signal.listening:
            await store.wait_for_work(0.05)


def pending(saga_id: str, **fields: Any) -> Any:
    """A saga as ``enqueue`` stores it: ``PENDING``, held by nobody."""
    record = make_record(saga_id, status=SagaStatus.PENDING)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


async def woken_within(store: PostgresSagaStore, action: Callable[[], Awaitable[Any]]) -> float:
    """Seconds from ``action`` (in another store) until a waiting ``store`` returns ``True``."""
    await listening(store)
    waiter = asyncio.ensure_future(store.wait_for_work(10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = time.monotonic()
    await action()
    assert await asyncio.wait_for(waiter, timeout=QUICK) is True
    return time.monotonic() - started


async def backends(pg_dsn: str, application_name: str) -> list[tuple[int, str]]:
    """The (pid, last query) of every server backend with this application name."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = $1",
            application_name,
        )
    finally:
        await conn.close()
    return [(row["pid"], row["query"]) for row in rows]


async def listener_pids(pg_dsn: str, application_name: str) -> list[int]:
    """The backends of this application name whose last statement was a LISTEN."""
    return [
        pid
        for pid, query in await backends(pg_dsn, application_name)
        if query.lstrip().upper().startswith("LISTEN")
    ]


def named(application_name: str) -> dict[str, Any]:
    """Store options giving its connections (the listener's too) an application name."""
    return {"pool_options": {"server_settings": {"application_name": application_name}}}


# ---------------------------------------------------------------------- signals


async def test_an_enqueue_by_another_store_wakes_a_waiting_worker(make_store: MakeStore) -> None:
    """A worker waiting 10 s returns at once when another pool enqueues a saga."""
    worker, client = await make_store(), await make_store()
    elapsed = await woken_within(worker, lambda: client.save(pending("s-1")))
    assert elapsed < QUICK


@pytest.mark.parametrize("action", ["release", "request_cancel", "redrive"])
async def test_other_kinds_of_work_from_another_store_wake_a_worker(
    make_store: MakeStore, action: str
) -> None:
    """A release, a cancel request and a redrive (a free save) made elsewhere all wake it."""
    worker, other = await make_store(), await make_store()
    record = make_record(
        "s-1", status=SagaStatus.FAILED if action == "redrive" else SagaStatus.RUNNING
    )
    await other.save(record)
    if action == "release":
        await other.claim("w2", "l2", lease_seconds=30, saga_names=["orders"])

    async def act() -> None:
        if action == "release":
            assert await other.release("s-1", "w2", "l2")
        elif action == "request_cancel":
            assert await other.request_cancel("s-1", "stop") is not None
        else:
            record.status, record.completed_at = SagaStatus.COMPENSATING, None
            await other.save(record)

    assert await woken_within(worker, act) < QUICK


_ENQUEUE_SCRIPT = """
import asyncio, sys
from lexigram.events.sagas import SagaStatus
from lexigram.events.sagas.postgres import PostgresSagaStore
from lexigram.events.sagas.testing.contract import make_record

async def main() -> None:
    async with PostgresSagaStore(sys.argv[1], table=sys.argv[2]) as store:
        await store.save(make_record("from-another-process", status=SagaStatus.PENDING))

asyncio.run(main())
"""


async def test_an_enqueue_by_another_process_wakes_a_waiting_worker(
    pg_dsn: str, make_store: MakeStore, table: str
) -> None:
    """A saga enqueued by a separate Python process wakes this one's ``wait_for_work``."""
    worker = await make_store()
    await listening(worker)
    waiter = asyncio.ensure_future(worker.wait_for_work(30))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ENQUEUE_SCRIPT, pg_dsn, table
    )
    assert await asyncio.wait_for(process.wait(), timeout=45) == 0
    assert await asyncio.wait_for(waiter, timeout=QUICK) is True
    loaded = await worker.load("from-another-process")
    assert loaded is not None


async def test_held_saves_send_no_signal(pg_dsn: str, make_store: MakeStore) -> None:
    """start()'s saves, steps, claims, renewals and future-dated enqueues notify nobody."""
    store = await make_store()
    received: list[str] = []
    spy = await asyncpg.connect(pg_dsn)
    try:
        await spy.add_listener(store._sql.channel, lambda *args: received.append(args[3]))
        held = make_record(
            "held", owner="w1", lease_id="l1", lease_expires_at=BASE_TIME + timedelta(seconds=30)
        )
        await store.save(held)  # start(): inserted already held
        await store.save(held)  # a step
        await store.save(pending("later", not_before=datetime.now(UTC) + timedelta(hours=1)))
        await store.save(make_record("done", status=SagaStatus.COMPLETED))
        await store.renew("w1", "l1", ["held"], lease_seconds=30)
        await store.save(pending("now"))
        assert [
            r.saga_id
            for r in await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"])
        ] == ["now"]
        await asyncio.sleep(0.2)
    finally:
        await spy.close()
    assert received == ["orders"]  # the one enqueue that was due, with its saga name


async def test_saves_stay_one_statement_each(make_store: MakeStore) -> None:
    """Held inserts and updates are one statement, and do not call pg_notify."""
    queries: list[str] = []

    async def log_queries(conn: Any) -> None:
        conn.add_query_logger(lambda record: queries.append(record.query))

    store = await make_store(min_size=1, max_size=1, pool_options={"init": log_queries})
    held = make_record(
        "held", owner="w1", lease_id="l1", lease_expires_at=BASE_TIME + timedelta(seconds=30)
    )
    free = pending("free")
    await asyncio.sleep(0)
    queries.clear()
    await store.save(held)
    await store.save(held)
    await asyncio.sleep(0)
    assert [q.split()[0] for q in queries] == ["INSERT", "UPDATE"]
    assert not any("pg_notify" in q for q in queries)
    queries.clear()
    await store.save(free)
    await store.save(free)
    await asyncio.sleep(0)
    assert [q.split()[0] for q in queries] == ["INSERT", "UPDATE"]


async def test_a_sign_that_comes_between_waits_is_kept(make_store: MakeStore) -> None:
    """Work enqueued while the worker was busy makes its next wait return at once."""
    worker, client = await make_store(), await make_store()
    await listening(worker)
    await client.save(pending("s-1"))
    await asyncio.sleep(0.2)  # nobody waits when the notification arrives
    started = time.monotonic()
    assert await worker.wait_for_work(10) is True
    assert time.monotonic() - started < QUICK
    assert await worker.wait_for_work(0.05) is False  # and it was consumed


async def test_every_concurrent_waiter_is_woken(make_store: MakeStore) -> None:
    """Several calls waiting on one store all return when a sign comes."""
    worker, client = await make_store(), await make_store()
    await listening(worker)
    waiters = [asyncio.ensure_future(worker.wait_for_work(10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    await client.save(pending("s-1"))
    assert await asyncio.wait_for(asyncio.gather(*waiters), timeout=QUICK) == [True] * 3


# ---------------------------------------------------------------------- the listener


async def test_the_listener_is_one_connection_outside_the_pool(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """Opened by the first wait, apart from the pool (whose connections never LISTEN)."""
    app = unique_name("lexi_app")
    store = await make_store(min_size=2, max_size=2, **named(app))
    assert await listener_pids(pg_dsn, app) == []  # a client that never waits holds none
    await listening(store)
    assert len(await listener_pids(pg_dsn, app)) == 1
    assert store.pool is not None
    async with store.pool.acquire() as first, store.pool.acquire() as second:
        for conn in (first, second):
            assert await conn.fetch("SELECT pg_listening_channels()") == []
    await store.close()
    async with asyncio.timeout(10):
        while await backends(pg_dsn, app):  # close() closed the listener and the pool
            await asyncio.sleep(0.02)


async def test_a_borrowed_pool_store_listens_too(
    pg_dsn: str, make_store: MakeStore, table: str
) -> None:
    """A store on a borrowed pool opens its listener apart from that pool, and gets signals."""
    client = await make_store()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        worker = PostgresSagaStore(pool=pool, table=table)
        try:
            assert await woken_within(worker, lambda: client.save(pending("s-1"))) < QUICK
            async with pool.acquire() as conn:
                assert await conn.fetch("SELECT pg_listening_channels()") == []
        finally:
            await worker.close()
    finally:
        await pool.close()


async def test_a_killed_listener_is_replaced_on_the_next_wait(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """pg_terminate_backend on the listener: no error escapes, the next waits reconnect."""
    app = unique_name("lexi_app")
    worker, client = await make_store(**named(app)), await make_store()
    await listening(worker)
    [old_pid] = await listener_pids(pg_dsn, app)
    killer = await asyncpg.connect(pg_dsn)
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    finally:
        await killer.close()
    async with asyncio.timeout(10):
        while worker._signal.listening:  # the client library sees the connection close
            await asyncio.sleep(0.01)
    assert await worker.wait_for_work(1) in (True, False)  # reconnects; raises nothing
    assert await woken_within(worker, lambda: client.save(pending("s-1"))) < QUICK
    assert [pid for pid in await listener_pids(pg_dsn, app) if pid != old_pid]


async def test_a_wait_in_progress_survives_its_listener_dying(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """A listener killed mid-wait turns that wait into a sleep until its timeout."""
    app = unique_name("lexi_app")
    worker = await make_store(**named(app))
    await listening(worker)
    waiter = asyncio.ensure_future(worker.wait_for_work(0.5))
    await asyncio.sleep(0.05)
    [pid] = await listener_pids(pg_dsn, app)
    killer = await asyncpg.connect(pg_dsn)
    try:
        await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()
    assert await asyncio.wait_for(waiter, timeout=5) is False
    assert await worker.wait_for_work(5) is True  # reconnected: signs may have been missed


async def test_an_unreachable_server_makes_waits_sleep_not_raise() -> None:
    """Without a server, ``wait_for_work`` sleeps its timeout and returns ``False``."""
    store = PostgresSagaStore("postgresql://postgres@127.0.0.1:1/test", command_timeout=2)
    try:
        for _ in range(2):
            started = time.monotonic()
            assert await store.wait_for_work(0.2) is False
            assert time.monotonic() - started >= 0.19
    finally:
        await store.close()


async def test_wait_for_work_refuses_bad_timeouts_and_closed_stores(
    make_store: MakeStore,
) -> None:
    """A bad timeout is a TypeError or ValueError; a closed store is unavailable."""
    store = await make_store()
    for bad, error in (("1", TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="timeout"):
            await store.wait_for_work(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        await store.wait_for_work(float("nan"))
    waiter = asyncio.ensure_future(store.wait_for_work(10))
    await asyncio.sleep(0.05)
    await store.close()
    assert await asyncio.wait_for(waiter, timeout=QUICK) is False
    with pytest.raises(SagaStoreUnavailableError, match="closed"):
        await store.wait_for_work(0.01)


# ---------------------------------------------------------------------- cancel requests


async def test_a_cancel_request_from_another_store_reaches_the_holder(
    make_store: MakeStore,
) -> None:
    """The holder's heartbeat query sees a request made through another pool."""
    holder, client = await make_store(), await make_store()
    await holder.save(make_record("s-1"))
    (held,) = await holder.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
    asked = await client.request_cancel("s-1", "customer ✓")
    assert asked is not None
    assert (asked.version, asked.lease_owner) == (held.version, "w1")
    assert await holder.cancel_requests("w1", "l1") == {"s-1": "customer ✓"}


async def test_cancel_arguments_are_checked(store_for_args: PostgresSagaStore) -> None:
    """Non-text ids and reasons, and reasons a text column cannot hold, are refused."""
    store = store_for_args
    with pytest.raises(TypeError, match="reason"):
        await store.request_cancel("s-1", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="saga_id"):
        await store.request_cancel(1, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reason"):
        await store.request_cancel("s-1", "a\x00b")
    with pytest.raises(ValueError, match="reason"):
        await store.request_cancel("s-1", "\ud800")
    with pytest.raises(TypeError, match="lease_id"):
        await store.cancel_requests("w1", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exclude"):
        await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"], exclude="s-1")


@pytest.fixture
async def store_for_args(make_store: MakeStore) -> PostgresSagaStore:
    """A store with one running saga."""
    store = await make_store()
    await store.save(make_record("s-1"))
    return store


# ---------------------------------------------------------------------- transactional enqueue


async def test_save_in_a_transaction_that_rolls_back_stores_nothing(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """Rolled back: no saga, and no worker woken."""
    store, worker = await make_store(), await make_store()
    await listening(worker)
    waiter = asyncio.ensure_future(worker.wait_for_work(0.5))
    conn = await asyncpg.connect(pg_dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        record = pending("s-1")
        await store.save_in(conn, record)
        assert record.version == 1
        await transaction.rollback()
    finally:
        await conn.close()
    assert await waiter is False
    assert await store.load("s-1") is None


async def test_save_in_a_committed_transaction_wakes_workers_at_commit(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """The notification is delivered at commit, not at the insert; the saga is claimable."""
    store, worker = await make_store(), await make_store()
    await listening(worker)
    waiter = asyncio.ensure_future(worker.wait_for_work(10))
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            await store.save_in(conn, pending("s-1"))
            await conn.execute("SELECT 1")  # the caller's own work in the same transaction
            await asyncio.sleep(0.3)
            assert not waiter.done()
            assert await worker.load("s-1") is None  # not visible before the commit
        assert await asyncio.wait_for(waiter, timeout=QUICK) is True
    finally:
        await conn.close()
    claimed = await worker.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
    assert [(r.saga_id, r.version) for r in claimed] == [("s-1", 2)]


async def test_save_in_through_a_pool_connection_proxy(pg_dsn: str, table: str) -> None:
    """The caller's connection may come from a pool (the store's borrowed one, too)."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    store = PostgresSagaStore(pool=pool, table=table)
    try:
        original = make_record("s-1", data={"items": [1, "✓"]})
        async with pool.acquire() as conn, conn.transaction():
            await store.save_in(conn, original)
        loaded = await store.load("s-1")
        assert loaded is not None
        assert same_fields(loaded, original)
    finally:
        await store.close()
        await pool.close()


async def test_save_in_refuses_what_save_refuses(pg_dsn: str, make_store: MakeStore) -> None:
    """An existing id conflicts, bad data is refused before sending, only new sagas go."""
    store = await make_store()
    await store.save(make_record("s-1"))
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(ConcurrencyConflictError) as caught:
            await store.save_in(conn, make_record("s-1"))
        assert (caught.value.expected_version, caught.value.actual_version) == (0, 1)
        bad = make_record("s-2", data={"ratio": float("nan")})
        with pytest.raises(SagaDataError):
            await store.save_in(conn, bad)
        existing = await store.load("s-1")
        assert existing is not None
        with pytest.raises(ValueError, match="version must be 0"):
            await store.save_in(conn, existing)
        with pytest.raises(TypeError, match="connection"):
            await store.save_in(object(), make_record("s-3"))
        transaction = conn.transaction()
        await transaction.start()
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.execute("SELECT 1 / 0")
        with pytest.raises(SagaStoreError, match="SQLSTATE 25P02"):  # the caller's, aborted
            await store.save_in(conn, make_record("s-4"))
        await transaction.rollback()
    finally:
        await conn.close()
    assert await store.load("s-2") is None
    assert await store.load("s-4") is None


# ---------------------------------------------------------------------- cheap claims


def _scan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's nodes that read the table or one of its indexes."""
    found = [plan] if "Relation Name" in plan or "Index Name" in plan else []
    for child in plan.get("Plans", []):
        found += _scan_nodes(child)
    return found


def _rows_read(node: dict[str, Any]) -> float:
    """The rows (or index entries) a scan node touched, over all its loops."""
    per_loop = (
        node.get("Actual Rows", 0)
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )
    return float(per_loop * node.get("Actual Loops", 1))


async def _fill_a_busy_table(store: PostgresSagaStore) -> None:
    """Thousands of sagas a claim must not read, and a few it may take."""
    doc = "'{}'::json"  # sagas no claim may take: never decoded
    assert store.pool is not None
    t = f'"{store.schema}"."{store.table}"'
    columns = (
        "saga_id, saga_name, status, version, created_at, lease_owner, lease_id, "
        "lease_expires_at, not_before, completed_at, doc"
    )
    await store.pool.execute(f"""
        INSERT INTO {t} ({columns})
        SELECT 'held-' || i, CASE WHEN i % 2 = 0 THEN 'orders' ELSE 'payments' END, 'running',
            3, now() - interval '1 hour', 'w-' || (i % 40), 'l-' || (i % 40),
            now() + interval '1 hour', NULL, NULL, {doc}
        FROM generate_series(1, 4000) AS i;
        INSERT INTO {t} ({columns})
        SELECT 'mine-' || i, 'orders', 'running', 3, now() - interval '2 hours', 'me', 'me-now',
            now() + interval '1 hour', NULL, NULL, {doc}
        FROM generate_series(1, 300) AS i;
        INSERT INTO {t} ({columns})
        SELECT 'done-' || i, 'orders', 'completed', 5, now() - interval '3 hours', NULL, NULL,
            NULL, NULL, now() - interval '1 hour', {doc}
        FROM generate_series(1, 3000) AS i;
        INSERT INTO {t} ({columns})
        SELECT 'later-' || i, 'orders', 'pending', 1, now() - interval '4 hours', NULL, NULL,
            NULL, now() + interval '1 day', NULL, {doc}
        FROM generate_series(1, 1000) AS i;
    """)
    # The sagas a claim may take, stored as the engine stores them (real documents).
    hour = timedelta(hours=1)
    due = pending("due-1", created_at=BASE_TIME, not_before=BASE_TIME - hour)
    dead = make_record("dead-1", created_at=BASE_TIME - hour / 2, owner="gone", lease_id="x")
    dead.lease_expires_at = dead.updated_at  # a lease of no length: expired at once
    mine = make_record(
        "mine-before-1", saga_name="payments", created_at=BASE_TIME - hour / 2, owner="me"
    )
    mine.lease_id, mine.lease_expires_at = "me-before", BASE_TIME + hour
    for record in (due, dead, mine):
        await store.save(record)
    for index in range(1, 41):
        name = "orders" if index % 2 == 0 else "payments"
        created = BASE_TIME + timedelta(seconds=index)
        ready = make_record(
            f"ready-{index}", saga_name=name, status=SagaStatus.PENDING, created_at=created
        )
        await store.save(ready)
    await store.pool.execute(f"ANALYZE {t}")


async def _explain(
    pg_dsn: str, statement: str, args: list[str], *, generic: bool
) -> dict[str, Any]:
    """EXPLAIN ANALYZE a statement (rolled back) as the pool runs it, or as a generic plan."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(f"PREPARE probe AS {statement}")
            if generic:
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            text = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe({', '.join(args)})"
            )
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
    plan: dict[str, Any] = json.loads(text)[0]["Plan"]
    return plan


@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
async def test_a_claim_reads_neither_held_nor_finished_nor_scheduled_sagas(
    pg_dsn: str, make_store: MakeStore, generic: bool
) -> None:
    """On 8,300 sagas (4,300 held by live leases), a claim of 10 reads a few dozen rows."""
    store = await make_store()
    await _fill_a_busy_table(store)
    args = ["'{orders,payments}'", "'me'", "'me-now'", "'30 seconds'", "10", "'{}'"]
    plan = await _explain(pg_dsn, store._sql.claim, args, generic=generic)
    assert plan["Actual Rows"] == 10  # the Update: ten sagas claimed
    scans = _scan_nodes(plan)
    assert not [s for s in scans if s["Node Type"] == "Seq Scan"]
    indexes = {s["Index Name"].removeprefix(store.table + "_") for s in scans if "Index Name" in s}
    assert indexes <= {"fresh_idx", "due_idx", "expiry_idx", "holder_idx", "cancel_idx", "pkey"}
    read = sum(_rows_read(s) for s in scans)  # 54 to 64: 2 x 10 fresh, 2 + 2 held, 10-20 by id
    assert read < 80, json.dumps(plan, indent=1)


async def test_claims_take_expired_restarted_and_due_sagas_on_a_busy_table(
    make_store: MakeStore,
) -> None:
    """The same table, claimed for real: every kind of claimable saga comes, oldest first."""
    store = await make_store()
    await _fill_a_busy_table(store)
    claimed = await store.claim(
        "me", "me-now", lease_seconds=30, saga_names=["orders", "payments"], limit=5
    )
    assert [r.saga_id for r in claimed] == [
        "due-1",  # free, due since 6 hours
        "dead-1",  # its worker's lease ran out; created 5 hours ago
        "mine-before-1",  # held by this worker's earlier incarnation; as old (then by id)
        "ready-1",  # the oldest enqueued ones, across both names
        "ready-2",
    ]
    assert [(r.lease_owner, r.lease_id) for r in claimed] == [("me", "me-now")] * 5


async def test_a_heartbeat_cancel_check_reads_an_empty_index(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """With no cancel request pending, cancel_requests touches no row at all."""
    store = await make_store()
    await _fill_a_busy_table(store)
    for generic in (False, True):
        plan = await _explain(
            pg_dsn, store._sql.cancel_requests, ["'me'", "'me-now'"], generic=generic
        )
        scans = _scan_nodes(plan)
        assert [s["Index Name"] for s in scans if "Index Name" in s] == [
            f"{store.table}_cancel_idx"
        ]
        assert sum(_rows_read(s) for s in scans) == 0
    await store.request_cancel("mine-before-1", "stop")
    assert await store.cancel_requests("me", "me-before") == {"mine-before-1": "stop"}
    assert await store.cancel_requests("me", "me-now") == {}


# ---------------------------------------------------------------------- migration

_V1_DDL = """
CREATE TABLE "public"."{t}" (
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
) WITH (fillfactor = 80);
CREATE INDEX "{t}_claim_idx" ON "public"."{t}" (saga_name, created_at, saga_id)
    WHERE status IN ('pending', 'running', 'compensating');
CREATE INDEX "{t}_created_idx" ON "public"."{t}" (created_at, saga_id);
CREATE INDEX "{t}_name_idx" ON "public"."{t}" (saga_name, created_at, saga_id);
CREATE INDEX "{t}_status_idx" ON "public"."{t}" (status, created_at, saga_id);
CREATE INDEX "{t}_completed_idx" ON "public"."{t}" (completed_at)
    WHERE status IN ('completed', 'compensated', 'failed');
CREATE TABLE "public"."{t}_meta" (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO "public"."{t}_meta" (key, value) VALUES ('schema_version', '1');
"""


async def _make_v1_table(pg_dsn: str, table: str) -> Any:
    """A table as version 1 wrote it, holding one saga; return that saga's record."""
    record = make_record("old-1", status=SagaStatus.PENDING, data={"order_id": "o-1"})
    record.version = 1
    doc = json.loads(encode_record(record))
    for added in ("not_before", "cancel_requested_at", "cancel_reason", "redrives", "waiting"):
        doc.pop(added, None)  # a version 1 document has none of them
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(_V1_DDL.format(t=table))
        await conn.execute(
            f'INSERT INTO "public"."{table}" (saga_id, saga_name, status, version, created_at, '
            "updated_at, doc) VALUES ($1, 'orders', 'pending', 1, $2, $2, $3::json)",
            "old-1",
            record.created_at,
            json.dumps(doc),
        )
    finally:
        await conn.close()
    return record


async def test_a_version_1_table_is_migrated_in_place(
    pg_dsn: str, make_store: MakeStore, table: str
) -> None:
    """Its rows read back, and claims, cancel requests and due times work on them."""
    record = await _make_v1_table(pg_dsn, table)
    store = await make_store()
    loaded = await store.load("old-1")
    assert loaded is not None
    assert same_fields(loaded, record)
    assert (loaded.not_before, loaded.cancel_requested_at, loaded.redrives) == (None, None, 0)
    asked = await store.request_cancel("old-1", "migrated")
    assert asked is not None
    assert asked.cancel_reason == "migrated"
    (claimed,) = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
    assert (claimed.saga_id, claimed.version, claimed.cancel_reason) == ("old-1", 2, "migrated")
    assert await store.cancel_requests("w1", "l1") == {"old-1": "migrated"}
    later = pending("new-1", not_before=datetime.now(UTC) + timedelta(hours=1))
    await store.save(later)
    assert await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"]) == []
    assert store.pool is not None
    version = await store.pool.fetchval(
        f'SELECT value FROM "public"."{table}_meta" WHERE key = \'schema_version\''
    )
    indexes = {
        row["indexname"].removeprefix(table + "_")
        for row in await store.pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = $1", table
        )
    }
    assert version == str(SCHEMA_VERSION)
    assert {
        "fresh_idx",
        "due_idx",
        "expiry_idx",
        "holder_idx",
        "cancel_idx",
        "waiting_idx",
        "corr_idx",
    } <= indexes
    assert "claim_idx" not in indexes
    assert await store.send_signal("old-1", "approval", {}, "sig-1")


_V2_DDL = """
CREATE TABLE "public"."{t}" (
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
    cancel_reason text
) WITH (fillfactor = 80);
CREATE INDEX "{t}_created_idx" ON "public"."{t}" (created_at, saga_id);
CREATE INDEX "{t}_name_idx" ON "public"."{t}" (saga_name, created_at, saga_id);
CREATE INDEX "{t}_status_idx" ON "public"."{t}" (status, created_at, saga_id);
CREATE INDEX "{t}_completed_idx" ON "public"."{t}" (completed_at)
    WHERE status IN ('completed', 'compensated', 'failed');
CREATE INDEX "{t}_fresh_idx" ON "public"."{t}" (saga_name, created_at, saga_id)
    WHERE status IN ('pending', 'running', 'compensating') AND lease_owner IS NULL
        AND not_before IS NULL;
CREATE INDEX "{t}_due_idx" ON "public"."{t}" (saga_name, not_before, saga_id)
    WHERE status IN ('pending', 'running', 'compensating') AND lease_owner IS NULL
        AND not_before IS NOT NULL;
CREATE INDEX "{t}_expiry_idx" ON "public"."{t}"
    (saga_name, (coalesce(lease_expires_at, '-infinity'::timestamptz)))
    WHERE status IN ('pending', 'running', 'compensating') AND lease_owner IS NOT NULL;
CREATE INDEX "{t}_holder_idx" ON "public"."{t}" (lease_owner, lease_id)
    WHERE status IN ('pending', 'running', 'compensating') AND lease_owner IS NOT NULL;
CREATE INDEX "{t}_cancel_idx" ON "public"."{t}" (lease_owner, lease_id)
    WHERE status IN ('pending', 'running', 'compensating') AND cancel_requested_at IS NOT NULL;
CREATE TABLE "public"."{t}_meta" (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO "public"."{t}_meta" (key, value) VALUES ('schema_version', '2');
"""


async def _make_v2_table(pg_dsn: str, table: str) -> Any:
    """A table as version 2 wrote it, holding one saga due later; return its record."""
    record = pending("old-2", not_before=datetime.now(UTC) + timedelta(hours=1))
    record.version = 1
    doc = json.loads(encode_record(record))
    doc.pop("waiting", None)  # a version 2 document has no wait
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(_V2_DDL.format(t=table))
        await conn.execute(
            f'INSERT INTO "public"."{table}" (saga_id, saga_name, status, version, created_at, '
            "updated_at, not_before, doc) "
            "VALUES ($1, 'orders', 'pending', 1, $2, $2, $3, $4::json)",
            "old-2",
            record.created_at,
            record.not_before,
            json.dumps(doc),
        )
    finally:
        await conn.close()
    return record


async def test_a_version_2_table_is_migrated_in_place(
    pg_dsn: str, make_store: MakeStore, table: str
) -> None:
    """Its rows read back as sagas that wait for nothing, and take signals."""
    record = await _make_v2_table(pg_dsn, table)
    store = await make_store()
    loaded = await store.load("old-2")
    assert loaded is not None
    assert same_fields(loaded, record)
    assert loaded.waiting is None
    assert [r.saga_id for r in await store.list(waiting=False)] == ["old-2"]
    assert await store.list(waiting=True) == []
    assert await store.send_signal("old-2", "approval", {"ok": True}, "sig-1")
    signal = await store.next_signal("old-2", "approval", 0)
    assert signal is not None
    assert (signal.seq, signal.payload) == (1, {"ok": True})
    assert await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"]) == []
    assert await store.wake("old-2")
    (claimed,) = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
    assert (claimed.saga_id, claimed.version) == ("old-2", 2)
    assert store.pool is not None
    version = await store.pool.fetchval(
        f'SELECT value FROM "public"."{table}_meta" WHERE key = \'schema_version\''
    )
    indexes = {
        row["indexname"].removeprefix(table + "_")
        for row in await store.pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = ANY($1::text[])",
            [table, f"{table}_signals"],
        )
    }
    assert version == str(SCHEMA_VERSION) == "3"
    assert {"waiting_idx", "signals_pkey", "signal_id_key", "signal_idx"} <= indexes
    assert await store.delete("old-2")
    assert await store.pool.fetchval(f'SELECT count(*) FROM "public"."{table}_signals"') == 0


def _correlated(saga_id: str, correlation_id: object, **data: Any) -> str:
    """A version 2 document of a saga whose metadata holds ``correlation_id`` (if given)."""
    record = make_record(saga_id, data=data or None)
    record.version = 1
    doc = json.loads(encode_record(record))
    doc.pop("waiting", None)
    if correlation_id is None:
        doc["metadata"] = {}
    else:
        doc["metadata"]["correlation_id"] = correlation_id
    return json.dumps(doc)  # ensure_ascii: every non-ASCII character a \u escape


async def test_migrated_rows_are_found_by_their_correlation_id(
    pg_dsn: str, make_store: MakeStore, table: str
) -> None:
    """Each row's ``correlation_id`` is filled in, as ``record.correlation_id`` reads it."""
    rows = [
        ("plain", _correlated("plain", "order-1")),
        ("unset", _correlated("unset", None)),
        ("number", _correlated("number", 7)),
        ("nul-data", _correlated("nul-data", "order-1", note="a\x00b")),
        ("accented", _correlated("accented", "commande-é")),
        ("nul-id", _correlated("nul-id", "order\x00two")),
    ]
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(_V2_DDL.format(t=table))
        for index, (saga_id, doc) in enumerate(rows):
            await conn.execute(
                f'INSERT INTO "public"."{table}" (saga_id, saga_name, status, version, '
                "created_at, doc) VALUES ($1, 'orders', 'running', 1, $2, $3::json)",
                saga_id,
                BASE_TIME + timedelta(seconds=index),
                doc,
            )
    finally:
        await conn.close()
    store = await make_store()
    found = {
        wanted: [r.saga_id for r in await store.list(correlation_id=wanted)]
        for wanted in ("order-1", "unset", "number", "commande-é", "order\x00two")
    }
    assert found == {
        "order-1": ["nul-data", "plain"],
        "unset": ["unset"],
        "number": ["number"],
        "commande-é": ["accented"],
        "order\x00two": ["nul-id"],
    }
    assert store.pool is not None
    columns = dict(
        await store.pool.fetch(f'SELECT saga_id, correlation_id FROM "public"."{table}"')
    )
    assert columns["nul-id"] is None  # text cannot hold NUL: found by reading the records


@pytest.mark.parametrize("version", [1, 2])
async def test_stores_opening_an_old_table_together_migrate_it_once(
    pg_dsn: str, table: str, version: int
) -> None:
    """Six processes' stores opening a version 1 or 2 table at once all succeed."""
    await (_make_v1_table if version == 1 else _make_v2_table)(pg_dsn, table)
    racers = [PostgresSagaStore(pg_dsn, table=table) for _ in range(6)]
    try:
        await asyncio.gather(*(racer.open() for racer in racers))
        for racer in racers:
            loaded = await racer.load(f"old-{version}")
            assert loaded is not None
    finally:
        for racer in racers:
            await racer.close()


# ---------------------------------------------------------------------- the listener, alone


class FakeConnection:
    """Just what ``WorkSignal`` uses of an asyncpg connection; it can be made to fail."""

    def __init__(self) -> None:
        self.notify: Callable[..., None] | None = None
        self.on_lost: Callable[[Any], None] | None = None
        self.closed = False
        self.answers = True

    def add_termination_listener(self, callback: Callable[[Any], None]) -> None:
        self.on_lost = callback

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None:
        self.notify = callback

    def is_closed(self) -> bool:
        return self.closed

    async def execute(self, query: str, *, timeout: float) -> None:
        if not self.answers:
            raise TimeoutError

    async def close(self, *, timeout: float) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True

    def lose(self) -> None:
        """What asyncpg does when the server closes the connection."""
        self.closed = True
        assert self.on_lost is not None
        self.on_lost(self)


class FakeServer:
    """Hands out fake connections, or fails to, as a test says."""

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.refuse = False
        self.unable = False

    async def connect(self) -> FakeConnection | None:
        if self.refuse:
            raise ConnectionRefusedError("refused")
        if self.unable:
            return None
        self.opened.append(FakeConnection())
        return self.opened[-1]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def signal(server: FakeServer) -> AsyncIterator[WorkSignal]:
    made = WorkSignal("lexigram_test", server.connect, label="store")
    yield made
    await made.close()


async def test_a_signal_listens_from_its_first_wait(server: FakeServer, signal: WorkSignal) -> None:
    """No connection until the first wait; a notification then wakes the waiter."""
    assert server.opened == []
    assert await signal.wait(0.01) is False
    assert signal.listening
    waiter = asyncio.ensure_future(signal.wait(10))
    await asyncio.sleep(0)
    notify = server.opened[0].notify
    assert notify is not None
    notify(server.opened[0], 1, "lexigram_test", "orders")
    assert await asyncio.wait_for(waiter, timeout=QUICK) is True


async def test_a_silent_connection_that_does_not_answer_is_replaced(
    server: FakeServer, signal: WorkSignal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-open connection (no close, no answer) is dropped, and the next wait reconnects."""
    monkeypatch.setattr("lexigram.events.sagas._postgres.listener._PING_AFTER", 0.0)
    assert await signal.wait(0.01) is False
    server.opened[0].answers = False
    assert await signal.wait(0.01) is False  # timed out: the check finds it dead
    assert server.opened[0].closed
    assert not signal.listening
    assert await signal.wait(10) is True  # a new connection: signs may have been missed
    assert len(server.opened) == 2


async def test_a_lost_connection_makes_the_next_wait_reconnect(
    server: FakeServer, signal: WorkSignal
) -> None:
    """The server closing the connection: the next wait opens another and returns at once."""
    assert await signal.wait(0.01) is False
    server.opened[0].lose()
    assert not signal.listening
    assert await signal.wait(10) is True
    assert await signal.wait(0.01) is False
    assert len(server.opened) == 2


async def test_a_refused_connection_turns_waits_into_sleeps(
    server: FakeServer, signal: WorkSignal, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused: each wait sleeps its timeout (warned once); local wake-ups still work."""
    server.refuse = True
    with caplog.at_level("DEBUG", logger="lexigram.events.sagas"):
        for _ in range(3):
            started = time.monotonic()
            assert await signal.wait(0.05) is False
            assert time.monotonic() - started >= 0.04
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "ConnectionRefusedError" in warnings[0].getMessage()
    waiter = asyncio.ensure_future(signal.wait(10))
    await asyncio.sleep(0.01)
    signal.wake()
    assert await asyncio.wait_for(waiter, timeout=QUICK) is True
    server.refuse = False
    assert await signal.wait(10) is True  # listening at last: what was missed may be work
    assert signal.listening


async def test_a_store_that_cannot_open_a_connection_waits_on_local_signals(
    server: FakeServer, signal: WorkSignal
) -> None:
    """No way to connect apart (an exotic borrowed pool): it tries once, then relies on wakes."""
    server.unable = True
    assert await signal.wait(0.01) is False
    assert await signal.wait(0.01) is False
    signal.wake()
    assert await signal.wait(10) is True


async def test_closing_stops_a_connect_in_progress(server: FakeServer) -> None:
    """close() during the first connect leaves no connection open."""
    gate = asyncio.Event()
    opened: list[FakeConnection] = []

    async def slow_connect() -> FakeConnection:
        await gate.wait()
        opened.append(FakeConnection())
        return opened[-1]

    signal = WorkSignal("lexigram_test", slow_connect, label="store")
    assert await signal.wait(0.01) is False  # still connecting
    await signal.close()
    gate.set()
    await asyncio.sleep(0)
    assert opened == []
    assert await signal.wait(0.01) is False


# ---------------------------------------------------------------------- coalesced signals


async def test_a_burst_of_enqueues_sends_few_signals_and_one_after_the_last(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """Enqueues close together share signals; one always arrives after the last commit.

    A NOTIFY serialises the server's commits, so a burst must not send one per saga.
    """
    store = await make_store()
    arrivals: list[float] = []
    spy = await asyncpg.connect(pg_dsn)
    try:
        await spy.add_listener(store._sql.channel, lambda *args: arrivals.append(time.monotonic()))
        committed: list[float] = []

        async def enqueue(index: int) -> None:
            await store.save(pending(f"burst-{index:03d}"))
            committed.append(time.monotonic())

        await asyncio.gather(*(enqueue(index) for index in range(60)))
        await asyncio.sleep(0.3)
    finally:
        await spy.close()
    assert 1 <= len(arrivals) < 60
    assert max(arrivals) > max(committed)  # nothing enqueued is left without a signal
    claimed = await store.claim("w", "l", lease_seconds=30, saga_names=["orders"], limit=100)
    assert len(claimed) == 60


async def test_a_store_closing_sends_its_pending_signal(pg_dsn: str, make_store: MakeStore) -> None:
    """A trailing signal still due when the store closes is sent, not dropped."""
    store = await make_store()
    received: list[str] = []
    spy = await asyncpg.connect(pg_dsn)
    try:
        await spy.add_listener(store._sql.channel, lambda *args: received.append(args[3]))
        await store.save(pending("first"))  # notifies in its own statement
        await store.save(pending("second"))  # right after: a trailing signal is due
        await store.close()
        await asyncio.sleep(0.2)
    finally:
        await spy.close()
    assert received == ["orders", "orders"]
