"""PostgresSagaStore runs the store conformance suite, plus what only PostgreSQL can show.

Every test uses its own table (random suffix) and drops it afterwards, so tests can run
next to other work on the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

import pytest

from lexigram.events.sagas import (
    ConcurrencyConflictError,
    SagaStatus,
    SagaStepStatus,
    SagaStore,
    SagaStoreUnavailableError,
    SchemaVersionError,
)
from lexigram.events.sagas._logging import LOG_FIELDS
from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.codec import encode_record
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.testing.contract import (
    BASE_TIME,
    CorruptRow,
    ExpireLeases,
    Fault,
    StoreContract,
    make_record,
    parked,
)
from tests.conftest import postgres_required

try:
    import asyncpg

    from lexigram.events.sagas._postgres.dsn import connect_arguments, parse_pairs
    from lexigram.events.sagas._postgres.reads import Filters
    from lexigram.events.sagas._postgres.schema import SCHEMA_VERSION
    from lexigram.events.sagas.postgres import PostgresSagaStore
except ImportError:
    if postgres_required():
        raise
    pytest.skip("asyncpg is not installed (the 'postgres' extra)", allow_module_level=True)

MakeStore = Callable[..., Awaitable[PostgresSagaStore]]


def unique_name(prefix: str = "lexi_test") -> str:
    """A table (or schema) name no other test or helper uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def drop_tables(dsn: str, table: str, schema: str = "public") -> None:
    """Drop a test's saga table, its signals table and its meta table."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f'DROP TABLE IF EXISTS "{schema}"."{table}", "{schema}"."{table}_signals", '
            f'"{schema}"."{table}_meta"'
        )
    finally:
        await conn.close()


@pytest.fixture
async def make_store(pg_dsn: str) -> AsyncIterator[MakeStore]:
    """Build opened stores on one fresh table; close them and drop the table afterwards."""
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


async def execute(store: SagaStore, sql: str, *args: Any) -> Any:
    """Run SQL on the store's own pool; ``{t}`` stands for its quoted table."""
    assert isinstance(store, PostgresSagaStore)
    assert store.pool is not None
    return await store.pool.fetch(sql.format(t=f'"{store.schema}"."{store.table}"'), *args)


@pytest.fixture
def expire_leases() -> ExpireLeases:
    async def expire(store: SagaStore, saga_ids: list[str]) -> None:
        await execute(
            store,
            "UPDATE {t} SET lease_expires_at = now() - interval '1 second' "
            "WHERE saga_id = ANY($1::text[])",
            saga_ids,
        )

    return expire


@pytest.fixture
def corrupt_row() -> CorruptRow:
    async def corrupt(store: SagaStore, saga_id: str, *, fault: Fault = "garbage") -> None:
        doc = {
            # Valid JSON (the column is typed json) but no saga record: a foreign row.
            "garbage": json.dumps({"v": 1, "saga_id": saga_id, "unexpected": True}),
            "foreign_name": encode_record(make_record(saga_id, saga_name="other")),
            "foreign_id": encode_record(make_record("someone-else")),
        }[fault]
        await execute(
            store,
            "INSERT INTO {t} (saga_id, saga_name, status, version, created_at, doc) "
            "VALUES ($1, 'orders', 'running', 1, $2, $3::json)",
            saga_id,
            BASE_TIME,
            doc,
        )

    return corrupt


class TestPostgresStore(StoreContract):
    """The conformance suite on PostgreSQL."""


# ---------------------------------------------------------------------- construction


async def test_store_satisfies_protocol(store: PostgresSagaStore) -> None:
    """PostgresSagaStore is a SagaStore."""
    assert isinstance(store, SagaStore)


def test_import_without_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the module without asyncpg raises ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.delitem(sys.modules, "lexigram.events.sagas.postgres")
    with pytest.raises(ImportError, match=r"pip install 'lexigram-events\[postgres\]'"):
        importlib.import_module("lexigram.events.sagas.postgres")


@pytest.mark.parametrize("options", [{}, {"dsn": "postgresql://x", "pool": object()}])
def test_needs_exactly_one_of_dsn_and_pool(options: dict[str, Any]) -> None:
    """A store needs a DSN or a pool, not both and not neither."""
    with pytest.raises(ValueError, match="exactly one of dsn and pool"):
        PostgresSagaStore(**options)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table", 'sagas"; DROP TABLE users; --'),
        ("table", "sagas; DROP TABLE users"),
        ("schema", 'public"."x'),
        ("table", "1sagas"),
        ("table", ""),
        ("table", "t" * 49),
        ("schema", "s" * 64),
    ],
)
def test_invalid_identifiers_are_rejected(field: str, value: str) -> None:
    """Schema and table names must be plain identifiers; injection attempts are refused."""
    options: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        PostgresSagaStore("postgresql://unused", **options)


def test_repr_hides_the_dsn() -> None:
    """The store's repr names its table, never the DSN (it may hold a password)."""
    store = PostgresSagaStore("postgresql://app:s3cret@db/app", table="orders_sagas")
    assert "s3cret" not in repr(store)
    assert "orders_sagas" in repr(store)


# ---------------------------------------------------------------------- key=value DSNs


def key_value_dsn(pg_dsn: str, **extra: str) -> str:
    """The test server's URL as libpq ``key=value`` pairs, plus ``extra`` (written as is)."""
    url = urlparse(pg_dsn)
    pairs = {
        "host": url.hostname or "127.0.0.1",
        "port": str(url.port or 5432),
        "user": unquote(url.username or "postgres"),
        "dbname": url.path.lstrip("/") or "postgres",
    }
    if url.password:
        pairs["password"] = (
            "'" + unquote(url.password).replace("\\", "\\\\").replace("'", "\\'") + "'"
        )
    pairs.update(extra)
    return " ".join(f"{key}={value}" for key, value in pairs.items())


@pytest.mark.parametrize(
    ("dsn", "pairs"),
    [
        ("", {}),
        ("host=db port=5432", {"host": "db", "port": "5432"}),
        ("  host = db \t dbname='my db'  ", {"host": "db", "dbname": "my db"}),
        (r"password='it\'s \\ here' user=a\ b", {"password": "it's \\ here", "user": "a b"}),
        ("dbname='' user=x", {"dbname": "", "user": "x"}),
        ("host=a host=b", {"host": "b"}),
        ("host='a'port=5", {"host": "a", "port": "5"}),
        ("host= port=5", {"host": "port=5"}),  # as libpq: blanks after '=' are skipped
        ("password=a=b", {"password": "a=b"}),
    ],
)
def test_key_value_dsn_is_split_by_libpq_rules(dsn: str, pairs: dict[str, str]) -> None:
    """Whitespace, single quotes and backslash escapes are read as libpq reads them."""
    assert parse_pairs(dsn) == pairs


def test_key_value_dsn_maps_to_asyncpg_arguments() -> None:
    """Each libpq key becomes its asyncpg.connect argument (dbname is database, ...)."""
    dsn, arguments = connect_arguments(
        "host=a,b port=5432,5433 dbname=orders user=app password='p w' connect_timeout=10 "
        "sslmode=verify-full sslrootcert=/etc/ca.pem target_session_attrs=read-write "
        "application_name=worker passfile=/p krbsrvname=k gsslib=gssapi sslnegotiation=direct"
    )
    assert dsn == "postgresql://?sslrootcert=%2Fetc%2Fca.pem"
    assert arguments == {
        "host": ["a", "b"],
        "port": [5432, 5433],
        "database": "orders",
        "user": "app",
        "password": "p w",
        "timeout": 10.0,
        "ssl": "verify-full",
        "target_session_attrs": "read-write",
        "passfile": "/p",
        "krbsrvname": "k",
        "gsslib": "gssapi",
        "direct_tls": True,
        "server_settings": {"application_name": "worker"},
    }
    assert connect_arguments("connect_timeout=0")[1] == {"timeout": None}  # libpq: no limit
    assert connect_arguments("user= host=db")[1] == {"user": "host=db"}


@pytest.mark.parametrize(
    ("dsn", "named"),
    [
        ("host=db colour=blue", "'colour'"),
        ("host=db dbname", "without '='"),
        ("host=db dbname='orders", "'dbname' has no closing quote"),
        ("port=fifty", "'port'"),
        ("port=0", "'port'"),
        ("host=a port=1,2,3", "'port'"),
        ("connect_timeout=soon", "'connect_timeout'"),
        ("sslmode=sometimes", "'sslmode'"),
        ("sslnegotiation=maybe", "'sslnegotiation'"),
        ("options='-c search_path=x'", "'options'"),
    ],
)
def test_bad_key_value_dsn_is_refused_naming_the_key(dsn: str, named: str) -> None:
    """A malformed DSN, an unknown key or a bad value raises ValueError naming the key."""
    with pytest.raises(ValueError, match=named):
        PostgresSagaStore(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "user=app password=top secret host=db",
        "user=app password=top secret=x host=db",
        "user=app password='top secret' colour=blue",
        "password=top port=secret",
        "sslpassword=top secret",
    ],
)
def test_dsn_errors_never_echo_a_password(dsn: str) -> None:
    """Errors about a key=value DSN never quote a password, not even half of one."""
    with pytest.raises(ValueError, match="dsn") as caught:
        PostgresSagaStore(dsn)
    assert "top" not in str(caught.value)
    assert "secret" not in str(caught.value)


async def test_key_value_dsn_connects(pg_dsn: str) -> None:
    """A libpq key=value DSN (quoted, escaped values too) connects and runs the store."""
    table = unique_name()
    dsn = key_value_dsn(pg_dsn, application_name=r"'lexi \'kv\' test'", connect_timeout="5")
    try:
        async with PostgresSagaStore(dsn, table=table, min_size=1, max_size=1) as store:
            await store.save(make_record("s-1"))
            assert [r.saga_id for r in await store.list()] == ["s-1"]
            assert store.pool is not None
            assert await store.pool.fetchval("SHOW application_name") == "lexi 'kv' test"
            assert await store.pool.fetchval("SELECT current_database()") == urlparse(
                pg_dsn
            ).path.lstrip("/")
    finally:
        await drop_tables(pg_dsn, table)


async def test_pool_options_win_over_the_dsn(pg_dsn: str) -> None:
    """Settings given in pool_options override the same settings from a key=value DSN."""
    table = unique_name()
    dsn = key_value_dsn(pg_dsn, application_name="from-dsn")
    options = {"server_settings": {"application_name": "from-options"}}
    try:
        async with PostgresSagaStore(dsn, table=table, pool_options=options) as store:
            assert store.pool is not None
            assert await store.pool.fetchval("SHOW application_name") == "from-options"
    finally:
        await drop_tables(pg_dsn, table)


async def test_key_value_dsn_passes_ssl_files_to_asyncpg(pg_dsn: str) -> None:
    """The SSL file options reach asyncpg: a missing CA file fails the connection."""
    dsn = key_value_dsn(pg_dsn, sslmode="verify-ca", sslrootcert="/nonexistent/lexigram-ca.pem")
    store = PostgresSagaStore(dsn, command_timeout=5)
    try:
        with pytest.raises(SagaStoreUnavailableError) as caught:
            await store.open()
    finally:
        await store.close()
    assert isinstance(caught.value.__cause__, FileNotFoundError)


# ---------------------------------------------------------------------- schema


async def test_stores_starting_together_create_the_schema_once(pg_dsn: str) -> None:
    """Several workers opening a new table at the same moment all succeed."""
    table = unique_name()
    racers = [PostgresSagaStore(pg_dsn, table=table) for _ in range(6)]
    try:
        await asyncio.gather(*(racer.open() for racer in racers))
        await racers[0].save(make_record("s-1"))
        assert [r.saga_id for r in await racers[5].list()] == ["s-1"]
    finally:
        for racer in racers:
            await racer.close()
        await drop_tables(pg_dsn, table)


async def test_newer_schema_version_is_refused(pg_dsn: str, store: PostgresSagaStore) -> None:
    """A table written by a newer library version gives a clear error, not a misread."""
    meta = f'"{store.schema}"."{store.table}_meta"'
    assert store.pool is not None
    await store.pool.execute(f"UPDATE {meta} SET value = '99' WHERE key = 'schema_version'")
    newer = PostgresSagaStore(pg_dsn, table=store.table)
    try:
        with pytest.raises(SchemaVersionError, match="schema version '99'") as caught:
            await newer.open()
    finally:
        await newer.close()
    assert (caught.value.found_version, caught.value.supported_version) == ("99", SCHEMA_VERSION)
    assert caught.value.table == f"public.{store.table}"


async def test_a_missing_schema_is_created(pg_dsn: str) -> None:
    """A store in a schema that does not exist yet creates it."""
    schema = unique_name("lexi_schema")
    store = PostgresSagaStore(pg_dsn, schema=schema, table="sagas")
    try:
        await store.save(make_record("s-1"))
        loaded = await store.load("s-1")
        assert loaded is not None
    finally:
        await store.close()
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def test_claims_read_the_partial_index_of_free_live_sagas(store: PostgresSagaStore) -> None:
    """The claim statement can be served by the index of free live sagas.

    ``tests/test_postgres_service.py`` checks what claims read on a big table.
    """
    await store.save(make_record("s-1"))
    assert store.pool is not None
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # as on a big table
        plan = await conn.fetch(
            f"EXPLAIN {store._sql.claim}", ["orders"], "w", "l", timedelta(seconds=30), 10, []
        )
    assert any(f"{store.table}_fresh_idx" in row[0] for row in plan)


# ---------------------------------------------------------------------- writes


async def test_one_statement_per_save(make_store: MakeStore) -> None:
    """Insert and update are one statement each; only a conflict costs a second query."""
    queries: list[str] = []

    async def log_queries(conn: Any) -> None:
        conn.add_query_logger(lambda record: queries.append(record.query))

    store = await make_store(min_size=1, max_size=1, pool_options={"init": log_queries})
    record = make_record("s-1")
    await asyncio.sleep(0)
    queries.clear()
    await store.save(record)
    await store.save(record)
    await asyncio.sleep(0)
    assert [q.split()[0] for q in queries] == ["INSERT", "UPDATE"]
    queries.clear()
    with pytest.raises(ConcurrencyConflictError):
        await store.save(make_record("s-1"))
    await asyncio.sleep(0)
    assert [q.split()[0] for q in queries] == ["INSERT", "SELECT"]


async def test_a_serialization_failure_is_retried(
    pg_dsn: str, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Under SERIALIZABLE, a save that meets a concurrent update is retried and lands."""
    app = unique_name("lexi_app")
    store = await make_store(
        pool_options={
            "server_settings": {
                "application_name": app,
                "default_transaction_isolation": "serializable",
            }
        }
    )
    record = make_record("s-1")
    await store.save(record)
    other = await asyncpg.connect(pg_dsn)
    try:
        with caplog.at_level("INFO", logger="lexigram.events.sagas"):
            async with other.transaction():
                # Another session changes the row (not its version) and holds it: the save
                # waits, and fails with 40001 when that update commits.
                await other.execute(
                    f'UPDATE "public"."{store.table}" SET updated_at = now() WHERE saga_id = $1',
                    "s-1",
                )
                saving = asyncio.create_task(store.save(record))
                await wait_for_lock_waiter(pg_dsn, app)
            await saving
    finally:
        await other.close()
    assert record.version == 2
    assert any("SerializationError" in message for message in caplog.messages)


async def test_unreadable_row_is_put_back_after_a_claim(
    store: PostgresSagaStore, corrupt_row: CorruptRow
) -> None:
    """A claim that meets an unreadable row leaves that row's version and lease unchanged."""
    await corrupt_row(store, "bad-1")
    before = await execute(store, "SELECT version, lease_owner FROM {t} WHERE saga_id = 'bad-1'")
    assert await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"]) == []
    after = await execute(store, "SELECT version, lease_owner FROM {t} WHERE saga_id = 'bad-1'")
    assert [tuple(row) for row in after] == [tuple(row) for row in before] == [(1, None)]


async def test_skipped_rows_are_logged_with_the_structured_fields(
    store: PostgresSagaStore, corrupt_row: CorruptRow, caplog: pytest.LogCaptureFixture
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


# ---------------------------------------------------------------------- operators' reads


async def test_a_correlation_id_changed_by_a_step_is_found_by_the_new_one(
    store: PostgresSagaStore,
) -> None:
    """Every save writes the correlation id column (a step may change the metadata)."""
    record = make_record("s-1", owner="w1", lease_id="l1")
    await store.save(record)
    record.metadata["correlation_id"] = "order-9"
    await store.save(record)
    assert [r.saga_id for r in await store.list(correlation_id="order-9")] == ["s-1"]
    assert await store.list(correlation_id="corr-s-1") == []
    record.metadata["correlation_id"] = 9  # not a str: the saga id stands in
    await store.save(record)
    assert [r.saga_id for r in await store.list(correlation_id="s-1")] == ["s-1"]


async def test_a_correlation_id_text_cannot_hold_is_stored_and_found(
    store: PostgresSagaStore,
) -> None:
    """An id holding NUL is stored (the column left NULL) and found, paged, by its records."""
    for index in range(3):
        record = make_record(f"s-{index}", created_at=BASE_TIME + timedelta(seconds=index))
        record.metadata["correlation_id"] = "order\x00nine"
        await store.save(record)
    await store.save(make_record("other"))
    found = await store.list(correlation_id="order\x00nine", limit=2, offset=1)
    assert [r.saga_id for r in found] == ["s-1", "s-0"]
    assert len(await store.list(correlation_id="order\x00nine")) == 3
    assert await store.list(correlation_id="lone \ud800") == []  # no stored id holds one
    assert await execute(store, "SELECT saga_id FROM {t} WHERE correlation_id IS NULL") != []


async def test_listing_by_correlation_id_reads_its_index(store: PostgresSagaStore) -> None:
    """``list(correlation_id=)`` is served by the ``(correlation_id, created_at)`` index."""
    await store.save(make_record("s-1"))
    statement = Filters(correlation=True).statement(store._sql)
    assert store.pool is not None
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # as on a big table
        plan = await conn.fetch(f"EXPLAIN {statement}", 10, 0, "corr-s-1")
    assert any(f"{store.table}_corr_idx" in row[0] for row in plan)


@pytest.mark.parametrize(
    "filters",
    [
        {"correlation_id": 7},
        {"created_after": datetime(2026, 1, 1)},  # noqa: DTZ001 - the naive time refused
        {"created_before": "2026-01-01"},
    ],
)
async def test_list_refuses_filter_values_of_the_wrong_type(
    store: PostgresSagaStore, filters: dict[str, Any]
) -> None:
    """A non-str correlation id, or a time that is not timezone-aware, is a TypeError."""
    with pytest.raises(TypeError, match=next(iter(filters))):
        await store.list(**filters)


async def test_pages_past_an_unreadable_row_leave_no_saga_out(
    store: PostgresSagaStore, corrupt_row: CorruptRow
) -> None:
    """``OFFSET`` counts an unreadable row: a page may repeat a saga, never skip one."""
    for index in range(4):
        created_at = BASE_TIME + timedelta(days=index - 1)
        await store.save(make_record(f"s-{index}", created_at=created_at))
    await corrupt_row(store, "bad")  # newest first: s-3, s-2, s-1, bad, s-0
    pages = [[r.saga_id for r in await store.list(limit=2, offset=o)] for o in (0, 2, 4)]
    assert pages == [["s-3", "s-2"], ["s-1", "s-0"], ["s-0"]]


async def test_counts_read_the_status_and_waiting_columns(store: PostgresSagaStore) -> None:
    """One statement: the parked are live ones only, and statuses no saga has are left out."""
    await store.save(make_record("s-1"))
    await store.save(parked("w-1"))
    await store.save(parked("w-2"))
    await execute(store, "UPDATE {t} SET status = 'failed' WHERE saga_id = 'w-2'")
    await execute(store, "UPDATE {t} SET status = 'bogus' WHERE saga_id = 's-1'")
    counts = await store.counts()
    assert (counts["running"], counts["failed"], counts["waiting"]) == (1, 1, 1)
    assert "bogus" not in counts
    assert sum(counts.values()) == 3


# ---------------------------------------------------------------------- leases and clocks


async def test_a_slow_worker_clock_cannot_expire_a_live_lease(store: PostgresSagaStore) -> None:
    """A lease written by a worker whose clock is a day behind is still live by the server."""
    behind = datetime.now(UTC) - timedelta(days=1)
    await store.save(
        make_record(
            "s-1",
            created_at=behind,
            owner="w1",
            lease_id="l1",
            lease_expires_at=behind + timedelta(seconds=30),
        )
    )
    assert await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"]) == []


async def test_a_fast_worker_clock_cannot_lengthen_its_lease(store: PostgresSagaStore) -> None:
    """A worker whose clock runs a day ahead still gets a lease of its length from now()."""
    ahead = datetime.now(UTC) + timedelta(days=1)
    record = make_record(
        "s-1",
        created_at=ahead,
        owner="w1",
        lease_id="l1",
        lease_expires_at=ahead + timedelta(seconds=30),
    )
    await store.save(record)
    [row] = await execute(store, "SELECT lease_expires_at - now() AS left FROM {t}")
    assert timedelta(seconds=25) < row["left"] <= timedelta(seconds=30)
    loaded = await store.load("s-1")
    assert loaded is not None
    assert loaded.lease_expires_at == record.lease_expires_at


async def test_a_holders_save_keeps_a_fresh_lease_and_restamps_a_worn_one(
    store: PostgresSagaStore,
) -> None:
    """Saves by the holder leave a lease with 90% left alone (a HOT update), else re-stamp."""
    record = make_record("s-1", owner="w1", lease_id="l1")

    async def save_now() -> timedelta:
        now = datetime.now(UTC)
        record.updated_at, record.lease_expires_at = now, now + timedelta(seconds=30)
        await store.save(record)
        [row] = await execute(store, "SELECT lease_expires_at - now() AS left FROM {t}")
        left: timedelta = row["left"]
        return left

    assert timedelta(seconds=29) < await save_now() <= timedelta(seconds=30)
    [before] = await execute(store, "SELECT lease_expires_at FROM {t}")
    await save_now()
    [after] = await execute(store, "SELECT lease_expires_at FROM {t}")
    assert after == before  # kept: nothing indexed changed
    assert record.lease_expires_at == before["lease_expires_at"]  # and the record says so
    await execute(store, "UPDATE {t} SET lease_expires_at = now() + interval '20 seconds'")
    assert timedelta(seconds=29) < await save_now() <= timedelta(seconds=30)  # worn: renewed
    await execute(store, "UPDATE {t} SET lease_expires_at = now() + interval '1 hour'")
    assert await save_now() > timedelta(minutes=59)  # the holder's longer lease stays
    record.lease_id = "l2"
    assert await save_now() <= timedelta(seconds=30)  # another lease: stamped afresh


# ---------------------------------------------------------------------- connections


async def wait_for_lock_waiter(pg_dsn: str, application_name: str) -> None:
    """Return once a backend with this application name waits for a lock."""
    conn = await asyncpg.connect(pg_dsn)  # outside any transaction: fresh activity snapshots
    try:
        async with asyncio.timeout(10):
            while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                application_name,
            ):
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def terminate_backends(pg_dsn: str, application_name: str) -> int:
    """Kill every server backend with this application name; return how many."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
    finally:
        await conn.close()
    return len(rows)


async def killable_store(make_store: MakeStore) -> tuple[PostgresSagaStore, str]:
    """A store whose two connections carry a unique application name, and that name."""
    app = unique_name("lexi_app")
    store = await make_store(
        min_size=2, max_size=2, pool_options={"server_settings": {"application_name": app}}
    )
    await store.save(make_record("s-1"))
    await store.load("s-1")
    return store, app


async def test_reads_reconnect_after_connections_are_killed(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """Reads after every backend of the pool was terminated reconnect transparently."""
    store, app = await killable_store(make_store)
    assert await terminate_backends(pg_dsn, app) == 2
    loaded = await store.load("s-1")
    assert loaded is not None
    assert [r.saga_id for r in await store.list()] == ["s-1"]


async def test_write_after_connections_are_killed_fails_clearly_then_works(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """A write on a killed connection raises SagaStoreUnavailableError; the next one works."""
    store, app = await killable_store(make_store)
    assert await terminate_backends(pg_dsn, app) == 2
    with contextlib.suppress(SagaStoreUnavailableError):  # or it landed on a new connection
        await store.save(make_record("s-2"))
    record = make_record("s-3")
    await store.save(record)
    assert record.version == 1


async def test_connection_killed_mid_save_is_unavailable(
    pg_dsn: str, make_store: MakeStore
) -> None:
    """A save whose connection dies mid-statement raises SagaStoreUnavailableError."""
    app = unique_name("lexi_app")
    store = await make_store(pool_options={"server_settings": {"application_name": app}})
    record = make_record("s-1")
    await store.save(record)
    blocker = await asyncpg.connect(pg_dsn)
    try:
        async with blocker.transaction():
            await blocker.execute(
                f'SELECT 1 FROM "public"."{store.table}" WHERE saga_id = $1 FOR UPDATE', "s-1"
            )
            saving = asyncio.create_task(store.save(record))
            await wait_for_lock_waiter(pg_dsn, app)
            assert await terminate_backends(pg_dsn, app) >= 1
            with pytest.raises(SagaStoreUnavailableError) as caught:
                await saving
    finally:
        await blocker.close()
    assert caught.value.saga_id == "s-1"
    assert record.version == 1
    loaded = await store.load("s-1")
    assert loaded is not None
    assert loaded.version == 1


async def test_unreachable_server_is_unavailable() -> None:
    """A store that cannot connect raises SagaStoreUnavailableError, chained."""
    store = PostgresSagaStore("postgresql://postgres@127.0.0.1:1/test", command_timeout=2)
    try:
        with pytest.raises(SagaStoreUnavailableError) as caught:
            await store.load("s-1")
    finally:
        await store.close()
    assert caught.value.__cause__ is not None


async def test_closed_store_is_unavailable(make_store: MakeStore) -> None:
    """After close() the owned pool is gone and calls raise SagaStoreUnavailableError."""
    store = await make_store()
    await store.close()
    assert store.pool is None
    with pytest.raises(SagaStoreUnavailableError, match="closed"):
        await store.load("s-1")


async def test_async_with_opens_and_closes_an_owned_pool(pg_dsn: str) -> None:
    """``async with`` opens the store (creating its pool) and closes the pool on exit."""
    table = unique_name()
    try:
        async with PostgresSagaStore(pg_dsn, table=table) as store:
            pool = store.pool
            assert pool is not None
            await store.save(make_record("s-1"))
        assert pool.is_closing()
    finally:
        await drop_tables(pg_dsn, table)


async def test_borrowed_pool_stays_open(pg_dsn: str) -> None:
    """close() leaves a borrowed pool open for its owner."""
    table = unique_name()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        store = PostgresSagaStore(pool=pool, table=table)
        await store.save(make_record("s-1"))
        await store.close()
        assert await pool.fetchval("SELECT 1") == 1
        assert not pool.is_closing()
    finally:
        await pool.close()
        await drop_tables(pg_dsn, table)


# ---------------------------------------------------------------------- many workers


async def test_two_pools_claiming_200_sagas_never_share_one(make_store: MakeStore) -> None:
    """Two stores with separate pools, claiming in parallel, each saga goes to one of them."""
    first = await make_store(max_size=4)
    second = await make_store(max_size=4)
    for index in range(200):
        await first.save(make_record(f"s-{index:03}", created_at=BASE_TIME + timedelta(index)))

    async def drain(store: PostgresSagaStore, worker: str) -> list[str]:
        taken: list[str] = []
        while batch := await store.claim(
            worker, worker, lease_seconds=30, saga_names=["orders"], limit=7
        ):
            taken += [record.saga_id for record in batch]
        return taken

    workers = {
        f"{label}-w{n}": store for n in range(4) for label, store in [("a", first), ("b", second)]
    }
    results = await asyncio.gather(*(drain(store, worker) for worker, store in workers.items()))
    ids = [saga_id for taken in results for saga_id in taken]
    assert len(ids) == len(set(ids)) == 200
    claimed_by = {
        saga_id: worker for worker, taken in zip(workers, results, strict=True) for saga_id in taken
    }
    stored = await execute(first, "SELECT saga_id, lease_owner FROM {t}")
    assert {row["saga_id"]: row["lease_owner"] for row in stored} == claimed_by


class ThreeSteps(SagaBase):
    """A small saga whose steps write to the context."""

    name = "three_steps"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
        ctx["reserved"] = True
        return {"reservation": "r-1"}

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        ctx["reserved"] = False

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> dict[str, Any]:
        return {"charged": ctx["amount"]}

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> None:
        ctx["confirmed"] = True


async def test_manager_runs_a_saga_end_to_end(store: PostgresSagaStore) -> None:
    """A SagaManager on the store runs a saga to COMPLETED and the record loads back."""
    async with SagaManager(store, config=SagaConfig(lease_seconds=30)) as manager:
        manager.register(ThreeSteps)
        done = await manager.execute("three_steps", {"amount": 500}, timeout=30)
    loaded = await store.load(done.saga_id)
    assert loaded is not None
    assert loaded.status is SagaStatus.COMPLETED
    assert loaded.data == {"amount": 500, "reserved": True, "confirmed": True}
    assert loaded.step_statuses() == dict.fromkeys(
        ["reserve", "charge", "confirm"], SagaStepStatus.COMPLETED
    )
    assert loaded.steps["charge"].output == {"charged": 500}
    assert (loaded.version, loaded.lease_owner) == (4, None)


class TwoSteps(SagaBase):
    """A saga whose second step waits until the test lets it finish."""

    name = "two_steps"
    release_second = asyncio.Event()
    runs: ClassVar[list[str]] = []

    @saga_step("first")
    async def first(self, ctx: SagaContext) -> None:
        self.runs.append("first")

    @saga_step("second")
    async def second(self, ctx: SagaContext) -> None:
        self.runs.append("second")
        await self.release_second.wait()


async def test_another_worker_finishes_a_saga_after_shutdown(make_store: MakeStore) -> None:
    """A saga stopped by one worker's shutdown is recovered and finished by another."""
    TwoSteps.runs.clear()
    TwoSteps.release_second = asyncio.Event()
    config = SagaConfig(shutdown_timeout=0.01)
    first_worker = SagaManager(await make_store(), config=config, worker_id="worker-a")
    first_worker.register(TwoSteps)
    saga_id = await first_worker.start("two_steps", {})
    while TwoSteps.runs != ["first", "second"]:
        await asyncio.sleep(0.01)
    await first_worker.close()
    TwoSteps.release_second.set()
    async with SagaManager(await make_store(), config=config, worker_id="worker-b") as second:
        second.register(TwoSteps)
        assert await second.recover() == 1
        done = await second.wait(saga_id, timeout=30)
    assert done.status is SagaStatus.COMPLETED
    assert TwoSteps.runs == ["first", "second", "second"]
    assert done.previous_owner is None  # released at shutdown: not a crash takeover
