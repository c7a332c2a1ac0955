"""PostgresSagaStore's durable waits: what the conformance suite cannot show.

Races decided by the saga's row lock (a signal meeting a parking save, a delete meeting a
sender), transactions rolled back whole, the wait columns every save writes, wake-ups
across pools, the indexes the new reads use, and how errors surface.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lexigram.events.sagas import SagaStatus, SagaStoreUnavailableError
from lexigram.events.sagas.errors import CorruptRecordError, SagaFinishedError
from lexigram.events.sagas.testing.contract import BASE_TIME, make_record, parked
from tests.conftest import postgres_required

try:
    import asyncpg

    from lexigram.events.sagas._postgres.reads import Filters
    from lexigram.events.sagas._postgres.rows import UPDATE_ARGUMENTS, save_arguments
    from lexigram.events.sagas.postgres import PostgresSagaStore
    from tests.test_postgres import (
        drop_tables,
        terminate_backends,
        unique_name,
        wait_for_lock_waiter,
    )
except ImportError:
    if postgres_required():
        raise
    pytest.skip("asyncpg is not installed (the 'postgres' extra)", allow_module_level=True)

MakeStore = Callable[..., Awaitable[PostgresSagaStore]]
QUICK = 2.0
"""Seconds within which a signal from another pool must wake a waiting worker."""


@pytest.fixture
async def make_store(pg_dsn: str) -> AsyncIterator[MakeStore]:
    """Build opened stores on one fresh table, each with a pool of its own."""
    table = unique_name()
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
    await drop_tables(pg_dsn, table)


@pytest.fixture
async def store(make_store: MakeStore) -> PostgresSagaStore:
    return await make_store()


async def named_store(make_store: MakeStore) -> tuple[PostgresSagaStore, str]:
    """A store whose connections carry a unique application name, and that name."""
    app = unique_name("lexi_app")
    store = await make_store(pool_options={"server_settings": {"application_name": app}})
    return store, app


async def columns(store: PostgresSagaStore, saga_id: str) -> tuple[Any, ...]:
    """The saga's ``(waiting, waiting_signal, signal_seq)`` columns."""
    assert store.pool is not None
    row = await store.pool.fetchrow(
        f"SELECT waiting, waiting_signal, signal_seq FROM {store._sql.qualified} "
        "WHERE saga_id = $1",
        saga_id,
    )
    assert row is not None
    return tuple(row)


async def stored_signals(store: PostgresSagaStore) -> list[tuple[str, int, str]]:
    """Every row of the signals table: ``(saga_id, seq, signal_id)``."""
    assert store.pool is not None
    rows = await store.pool.fetch(
        f"SELECT saga_id, seq, signal_id FROM {store._sql.signals} ORDER BY saga_id, seq"
    )
    return [tuple(row) for row in rows]


async def claim_ids(store: PostgresSagaStore) -> list[str]:
    """Claim what is claimable as ``w9``; return the ids."""
    claimed = await store.claim("w9", "l9", lease_seconds=30, saga_names=["orders"])
    return [record.saga_id for record in claimed]


async def held(store: PostgresSagaStore, saga_id: str) -> Any:
    """Store a saga and claim it as ``w1``/``l1``; return the claimed record."""
    await store.save(make_record(saga_id))
    (record,) = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
    return record


# ---------------------------------------------------------------------- races


async def test_a_signal_meeting_a_parking_save_sees_the_parked_saga(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """A signal that waited for the parking save's lock makes the parked saga due."""
    store, app = await named_store(make_store)
    record = await held(store, "s-1")
    park = parked("s-1")
    park.version = record.version
    other = await asyncpg.connect(pg_dsn)
    try:
        async with other.transaction():  # the holder's parking save, not committed yet
            arguments = save_arguments(park)[:UPDATE_ARGUMENTS]
            assert await other.fetchrow(store._sql.update_free, *arguments) is not None
            sending = asyncio.create_task(store.send_signal("s-1", "approval", {}, "sig"))
            await wait_for_lock_waiter(pg_dsn, app)
        assert await sending is True
    finally:
        await other.close()
    assert await claim_ids(store) == ["s-1"]


async def test_a_parking_save_meeting_a_signal_then_finds_it(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """A park that waited for a sender's lock lands; the signal is there to be found."""
    store, app = await named_store(make_store)
    record = await held(store, "s-1")
    park = parked("s-1")
    park.version = record.version
    other = await asyncpg.connect(pg_dsn)
    try:
        async with other.transaction():  # a sender, between its two statements' commit
            row = await other.fetchrow(store._sql.take_signal_seq, "s-1", "approval")
            await other.execute(
                store._sql.insert_signal, "s-1", row["signal_seq"], "approval", "sig", "{}"
            )
            parking = asyncio.create_task(store.save(park))
            await wait_for_lock_waiter(pg_dsn, app)
        await parking
    finally:
        await other.close()
    assert await claim_ids(store) == []  # the sender saw it held: the park decides
    signal = await store.next_signal("s-1", "approval", 0)
    assert signal is not None
    assert signal.signal_id == "sig"


async def test_a_delete_meeting_a_sender_deletes_its_signal(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """A signal committed while ``delete`` waited for the saga's lock is deleted with it."""
    store, app = await named_store(make_store)
    await store.save(make_record("s-1"))
    other = await asyncpg.connect(pg_dsn)
    try:
        async with other.transaction():
            row = await other.fetchrow(store._sql.take_signal_seq, "s-1", "approval")
            await other.execute(
                store._sql.insert_signal, "s-1", row["signal_seq"], "approval", "sig", "{}"
            )
            deleting = asyncio.create_task(store.delete("s-1"))
            await wait_for_lock_waiter(pg_dsn, app)
        assert await deleting is True
    finally:
        await other.close()
    assert await stored_signals(store) == []


async def test_signals_from_two_pools_get_distinct_seqs(make_store: MakeStore) -> None:
    """Senders in separate pools (processes) take ``seq`` 1..n, one each."""
    first, second = await make_store(), await make_store()
    await first.save(make_record("s-1"))
    sent = await asyncio.gather(
        *(
            (first if n % 2 else second).send_signal("s-1", "approval", {"n": n}, f"sig-{n}")
            for n in range(20)
        )
    )
    assert all(sent)
    assert [seq for _, seq, _ in await stored_signals(first)] == list(range(1, 21))
    assert (await columns(first, "s-1"))[2] == 20


# ---------------------------------------------------------------------- rolled back whole


async def test_a_duplicate_spends_no_seq_and_wakes_nothing(store: PostgresSagaStore) -> None:
    """A duplicate id for the awaited signal leaves the parked saga asleep and ``seq`` unspent."""
    await store.save(parked("s-1"))
    assert await store.send_signal("s-1", "reminder", {}, "same")
    assert await store.send_signal("s-1", "approval", {}, "same") is False
    assert await claim_ids(store) == []
    assert (await columns(store, "s-1"))[2] == 1
    assert await store.send_signal("s-1", "approval", {}, "new")
    assert await stored_signals(store) == [("s-1", 1, "same"), ("s-1", 2, "new")]
    assert await claim_ids(store) == ["s-1"]


async def test_a_refused_signal_changes_nothing(store: PostgresSagaStore) -> None:
    """A signal to a finished saga leaves its row (``signal_seq`` too) as it was."""
    await store.save(make_record("done", status=SagaStatus.COMPLETED))
    assert store.pool is not None
    query = f"SELECT xmin::text, signal_seq FROM {store._sql.qualified}"
    before = await store.pool.fetchrow(query)
    with pytest.raises(SagaFinishedError, match="completed"):
        await store.send_signal("done", "approval", {}, "late")
    assert await store.pool.fetchrow(query) == before
    assert await stored_signals(store) == []


async def test_saves_never_touch_signal_seq(store: PostgresSagaStore) -> None:
    """Signals, then the holder's saves, then more signals: ``seq`` goes on counting."""
    record = await held(store, "s-1")
    await store.send_signal("s-1", "approval", {}, "a")
    record.data["step"] = 1
    await store.save(record)
    await store.send_signal("s-1", "approval", {}, "b")
    assert [seq for _, seq, _ in await stored_signals(store)] == [1, 2]
    assert (await columns(store, "s-1"))[2] == 2


# ---------------------------------------------------------------------- the wait columns


async def test_every_kind_of_save_writes_the_wait_columns(
    pg_dsn: str, store: PostgresSagaStore
) -> None:
    """Enqueue, quiet enqueue, held insert, held update, park and ``save_in`` all write them."""
    await store.save(parked("enqueued"))
    await store.save(parked("quiet", until=BASE_TIME))  # right after another: quiet insert
    for saga_id in ("enqueued", "quiet"):
        assert await columns(store, saga_id) == ("signal", "approval", 0)
    delayed = parked("held", signal=None, until=BASE_TIME)
    delayed.lease_owner, delayed.lease_id = "w1", "l1"
    await store.save(delayed)  # a held insert
    assert await columns(store, "held") == ("delay", None, 0)
    delayed.waiting = None
    await store.save(delayed)  # a held update
    assert await columns(store, "held") == (None, None, 0)
    park = parked("held", until=BASE_TIME)
    park.version = delayed.version
    await store.save(park)  # parking: an update storing no lease
    assert await columns(store, "held") == ("signal", "approval", 0)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await store.save_in(conn, parked("in-transaction"))
    finally:
        await conn.close()
    assert await columns(store, "in-transaction") == ("signal", "approval", 0)


async def test_a_signal_makes_a_saga_due_in_its_column_not_its_document(
    store: PostgresSagaStore,
) -> None:
    """``not_before`` comes from the column: load and claim agree on the server's time."""
    await store.save(parked("s-1"))
    assert store.pool is not None
    doc_before = await store.pool.fetchval(f"SELECT doc::text FROM {store._sql.qualified}")
    await store.send_signal("s-1", "approval", {}, "sig")
    loaded = await store.load("s-1")
    assert loaded is not None
    assert loaded.not_before is not None
    assert loaded.not_before < datetime.now(UTC) + timedelta(seconds=5)
    assert await store.pool.fetchval(f"SELECT doc::text FROM {store._sql.qualified}") == (
        doc_before
    )
    (claimed,) = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
    assert (claimed.not_before, claimed.version) == (loaded.not_before, loaded.version + 1)


# ---------------------------------------------------------------------- wake-ups


async def listening(store: PostgresSagaStore) -> None:
    """Wait until the store's ``wait_for_work`` listens on its own connection."""
    async with asyncio.timeout(10):
        while not store._signal.listening:
            await store.wait_for_work(0.05)


@pytest.mark.parametrize("action", ["send_signal", "wake"])
async def test_a_signal_or_wake_from_another_pool_wakes_a_worker(
    make_store: MakeStore, action: str
) -> None:
    """The notification reaches a worker listening through its own connection."""
    worker, client = await make_store(), await make_store()
    await client.save(parked("s-1"))
    await listening(worker)
    await worker.wait_for_work(0.05)  # consume the enqueue's sign, if any came late
    waiter = asyncio.ensure_future(worker.wait_for_work(10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    if action == "send_signal":
        assert await client.send_signal("s-1", "approval", {}, "sig")
    else:
        assert await client.wake("s-1")
    assert await asyncio.wait_for(waiter, timeout=QUICK) is True


async def test_signals_that_wake_no_saga_notify_nobody(
    pg_dsn: str, store: PostgresSagaStore
) -> None:
    """Another name, a held saga, a duplicate: the signal is stored, no one is woken."""
    await store.save(parked("parked"))
    await held(store, "held")
    received: list[str] = []
    spy = await asyncpg.connect(pg_dsn)
    try:
        await spy.add_listener(store._sql.channel, lambda *args: received.append(args[3]))
        assert await store.send_signal("parked", "reminder", {}, "a")
        assert await store.send_signal("held", "approval", {}, "b")
        assert await store.send_signal("parked", "approval", {}, "a") is False
        assert await store.wake("held") is False
        await spy.execute("SELECT 1")  # a round trip after the commits
        await asyncio.sleep(0.1)
    finally:
        await spy.close()
    assert received == []


# ---------------------------------------------------------------------- what the reads cost


async def _plan(store: PostgresSagaStore, statement: str, *args: Any) -> str:
    """The plan of ``statement`` as on a big table (no sequential scans)."""
    assert store.pool is not None
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch(f"EXPLAIN {statement}", *args)
    return "\n".join(row[0] for row in rows)


async def test_listing_parked_sagas_reads_their_own_index(store: PostgresSagaStore) -> None:
    """``list(waiting=True)`` reads the partial index of parked sagas."""
    await store.save(parked("s-1"))
    statement = Filters(waiting=True).statement(store._sql)
    assert f"{store.table}_waiting_idx" in await _plan(store, statement, 10, 0)


async def test_next_signal_reads_the_index_by_name(store: PostgresSagaStore) -> None:
    """``next_signal`` is one probe of the ``(saga_id, name, seq)`` index."""
    await store.save(make_record("s-1"))
    await store.send_signal("s-1", "approval", {}, "sig")
    plan = await _plan(store, store._sql.next_signal, "s-1", "approval", 0)
    assert f"{store.table}_signal_idx" in plan


async def test_delete_terminal_deletes_only_its_sagas_signals(store: PostgresSagaStore) -> None:
    """The cleanup batch takes the signals of the sagas it deletes, no others."""
    for saga_id in ("done", "live"):
        await store.save(make_record(saga_id))
        await store.send_signal(saga_id, "approval", {}, "sig")
    record = await store.load("done")
    assert record is not None
    record.status, record.completed_at = SagaStatus.COMPLETED, BASE_TIME
    await store.save(record)
    assert await store.delete_terminal(before=BASE_TIME + timedelta(days=1)) == 1
    assert await stored_signals(store) == [("live", 1, "sig")]


async def test_the_longest_table_name_keeps_every_name_whole(pg_dsn: str) -> None:
    """With a 48-character table, no index or constraint name is cut to 63 characters."""
    table = unique_name().ljust(48, "x")
    store = PostgresSagaStore(pg_dsn, table=table)
    try:
        await store.save(parked("s-1"))
        assert await store.send_signal("s-1", "approval", {}, "sig")
        assert store.pool is not None
        names = {
            row["indexname"]
            for row in await store.pool.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = ANY($1::text[])",
                [table, f"{table}_signals"],
            )
        }
    finally:
        await store.close()
        await drop_tables(pg_dsn, table)
    suffixes = (
        "waiting_idx",
        "corr_idx",
        "signals_pkey",
        "signal_id_key",
        "signal_idx",
        "completed_idx",
    )
    assert {f"{table}_{suffix}" for suffix in suffixes} <= names


# ---------------------------------------------------------------------- errors


async def test_an_unreadable_payload_is_a_corrupt_record(store: PostgresSagaStore) -> None:
    """A payload edited into something other than an object raises ``CorruptRecordError``."""
    await store.save(make_record("s-1"))
    await store.send_signal("s-1", "approval", {}, "sig")
    assert store.pool is not None
    await store.pool.execute(f"UPDATE {store._sql.signals} SET payload = '[1]'::json")
    with pytest.raises(CorruptRecordError, match="s-1") as caught:
        await store.next_signal("s-1", "approval", 0)
    assert caught.value.saga_id == "s-1"


async def test_signal_arguments_are_checked_before_connecting() -> None:
    """Non-text ids and names, and text a column cannot hold, are refused up front."""
    store = PostgresSagaStore("postgresql://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(TypeError, match="saga_id"):
            await store.send_signal(1, "approval", {}, "sig")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="name"):
            await store.send_signal("s-1", "a\x00b", {}, "sig")
        with pytest.raises(ValueError, match="signal_id"):
            await store.send_signal("s-1", "approval", {}, "\ud800")
        with pytest.raises(TypeError, match="after"):
            await store.next_signal("s-1", "approval", "0")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="saga_id"):
            await store.wake(None)  # type: ignore[arg-type]
    finally:
        await store.close()
    assert store.pool is None  # nothing tried to connect


@pytest.mark.parametrize("operation", ["send_signal", "next_signal", "wake"])
async def test_an_unreachable_server_is_unavailable(operation: str) -> None:
    """Every durable-wait operation raises ``SagaStoreUnavailableError``, chained."""
    store = PostgresSagaStore("postgresql://postgres@127.0.0.1:1/test", command_timeout=2)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "send_signal": lambda: store.send_signal("s-1", "approval", {}, "sig"),
        "next_signal": lambda: store.next_signal("s-1", "approval", 0),
        "wake": lambda: store.wake("s-1"),
    }
    try:
        with pytest.raises(SagaStoreUnavailableError) as caught:
            await calls[operation]()
    finally:
        await store.close()
    assert caught.value.__cause__ is not None


async def test_a_signal_whose_connection_dies_is_unavailable(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """Killed mid-transaction: ``SagaStoreUnavailableError`` naming the saga, nothing stored."""
    store, app = await named_store(make_store)
    await store.save(make_record("s-1"))
    blocker = await asyncpg.connect(pg_dsn)
    try:
        async with blocker.transaction():
            await blocker.execute(
                f"SELECT 1 FROM {store._sql.qualified} WHERE saga_id = 's-1' FOR UPDATE"
            )
            sending = asyncio.create_task(store.send_signal("s-1", "approval", {}, "sig"))
            await wait_for_lock_waiter(pg_dsn, app)
            assert await terminate_backends(pg_dsn, app) >= 1
            with pytest.raises(SagaStoreUnavailableError) as caught:
                await sending
    finally:
        await blocker.close()
    assert caught.value.saga_id == "s-1"
    assert await store.next_signal("s-1", "approval", 0) is None
    assert await store.send_signal("s-1", "approval", {}, "sig") is True  # safe to send again
