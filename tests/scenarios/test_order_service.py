"""The order service example (``examples/order_service``) end to end, and its pieces.

The end-to-end test runs the example as its README says: the API under uvicorn and two
workers, all real processes, on a fresh PostgreSQL schema (dropped afterwards). It places a
few hundred orders over HTTP, SIGKILLs a worker while it holds orders (a replacement joins;
the dead worker's orders are taken over when its lease expires), cancels the slow orders
through the API while their shipping step runs, waits until every order is terminal, and
then checks with SQL that nothing was lost, stock is conserved, every completed order was
charged and shipped exactly once, and no compensated order left anything behind.

The smaller tests run the saga and the API in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from examples.order_service.saga import ORDER_SAGA_CONFIG, OrderSaga
from examples.order_service.services import (
    CARD_LIMIT,
    DEFAULT_CATALOGUE,
    Call,
    Charge,
    Declined,
    Faults,
    InventoryService,
    OrderServices,
    PaymentService,
    ServiceUnavailableError,
    ShippingService,
    install,
)
from examples.order_service.settings import Settings

from lexigram.events.sagas import SagaManager, SagaRecord, SagaStatus
from tests.conftest import postgres_required
from tests.support.order_service_cluster import (
    Cluster,
    check_outcome,
    child_env,
    free_port,
    plan_orders,
)
from tests.support.order_service_load import (
    cancel_while_shipping,
    http_client,
    kill_when_busy,
    place_orders,
    post_order,
    print_summary,
    wait_all_terminal,
    wait_until_up,
)

try:
    import asyncpg

    from lexigram.events.sagas.postgres import PostgresSagaStore
except ImportError:
    if postgres_required():
        raise
    pytest.skip("asyncpg is not installed (the 'postgres' extra)", allow_module_level=True)

if TYPE_CHECKING:
    from fastapi import FastAPI

ORDERS = 250
"""Orders the end-to-end test places."""
SLOW_EVERY = 25
"""Every 25th order is slow (10 of them), and cancelled while its shipping step runs."""
POST_CONCURRENCY = 8
"""HTTP requests in flight at once."""
WORKER_CONCURRENCY = 40
LEASE_SECONDS = 4.0
"""Short, so the killed worker's orders are taken over quickly."""
SLOW_SECONDS = 8.0
FAULT_RATE = 0.15
"""Share of service calls that lose their request or reply (retried by the engine)."""
BUDGET = 100.0
"""Seconds the whole run may take, from the first process started to the last check."""


def require_http_stack() -> None:
    """Skip (or fail under LEXIGRAM_REQUIRE_POSTGRES=1) without fastapi, uvicorn and httpx."""
    missing = [
        name for name in ("fastapi", "uvicorn", "httpx") if not importlib.util.find_spec(name)
    ]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install -e '.[examples]')"
        if postgres_required():
            pytest.fail(f"the order service example is required but {reason}")
        pytest.skip(reason)


@pytest.fixture
async def schema(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh schema for one test, dropped (with everything in it) afterwards."""
    name = f"order_e2e_{uuid.uuid4().hex[:10]}"
    yield name
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pool(pg_dsn: str, schema: str) -> AsyncIterator[Any]:
    """A connection pool with the services' tables installed and stocked in ``schema``."""
    made = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        await install(made, schema)
        yield made
    finally:
        await made.close()


# ---------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.timeout(BUDGET + 50)
# The code under test runs in the other processes. This loop only drives HTTP requests and
# SQL checks, in debug mode, on two cores shared with four service processes and
# PostgreSQL: a step that waited for a core looks "blocking" without blocking anything.
@pytest.mark.allow_blocking
async def test_orders_survive_a_killed_worker_and_cancels(
    pg_dsn: str, schema: str, pool: Any, tmp_path: Path
) -> None:
    """Hundreds of orders over HTTP, a worker SIGKILLed, cancels: every invariant holds."""
    require_http_stack()
    began, cpu = time.monotonic(), time.process_time()
    loop = asyncio.get_running_loop()
    give_up = loop.time() + BUDGET
    table = "sagas"
    saga_table = f'"{schema}"."{table}"'
    run = uuid.uuid4().hex[:6]
    orders = plan_orders(ORDERS, run, slow_every=SLOW_EVERY)
    port = free_port()
    env = child_env(
        dsn=pg_dsn,
        schema=schema,
        table=table,
        lease_seconds=str(LEASE_SECONDS),
        concurrency=str(WORKER_CONCURRENCY),
        fault_rate=str(FAULT_RATE),
        slow_seconds=str(SLOW_SECONDS),
        # Pools of three: two per worker (store, services) plus its listening connection,
        # one for the API: about 25 connections in all, next to other work on the server.
        pool_size="3",
        log_level="WARNING",
    )
    cluster = Cluster(env, tmp_path)
    victim, survivor, replacement = (f"{name}-{run}" for name in ("w1", "w2", "w3"))
    passed = False
    try:
        await cluster.start_api(port)
        await cluster.start_worker(victim)
        await cluster.start_worker(survivor)
        http = await asyncio.to_thread(http_client, f"http://127.0.0.1:{port}")
        async with http:
            await wait_until_up(http, cluster, give_up)
            started = time.monotonic()

            posted: dict[str, str] = {}
            async with asyncio.TaskGroup() as group:
                group.create_task(place_orders(http, orders, posted, concurrency=POST_CONCURRENCY))
                cancelling = [
                    group.create_task(cancel_while_shipping(http, order.key, give_up))
                    for order in orders
                    if order.slow
                ]
                orphans = await kill_when_busy(
                    pool, cluster, victim, saga_table, posted, give_up, min_placed=ORDERS // 3
                )
                await asyncio.sleep(1.0)
                await cluster.start_worker(replacement)
            cancels = {attempt.order_id: attempt for attempt in (t.result() for t in cancelling)}
            placed = time.monotonic()

            # The same Idempotency-Key again: the same order, no second saga.
            for order in orders[:10]:
                assert await post_order(http, order) == order.key

            counts = await wait_all_terminal(pool, saga_table, len(orders), cluster, give_up)
            finished = time.monotonic()

            # What the API shows agrees with the store.
            shown = {
                order.key: (await http.get(f"/orders/{order.key}")).json()["status"]
                for order in orders[::10]
            }

        async with PostgresSagaStore(pg_dsn, schema=schema, table=table, max_size=2) as store:
            records = await store.list(saga_name=OrderSaga.name, limit=ORDERS * 2)

        # Workers stop gracefully on SIGTERM (uvicorn re-raises the signal once it stopped).
        for name, codes in ((survivor, {0}), (replacement, {0}), ("api", {0, -signal.SIGTERM})):
            code = await cluster.stop(name, timeout=20)
            assert code in codes, f"{name} exited with {code}\n{cluster.output(name)}"

        by_id = {record.saga_id: record for record in records}
        assert set(by_id) == {order.key for order in orders}, "orders lost or duplicated"
        assert set(posted.values()) == set(posted) == set(by_id)
        assert shown == {key: by_id[key].status.value for key in shown}

        problems = await check_outcome(pool, schema, records, DEFAULT_CATALOGUE)
        assert not problems, "\n".join(problems[:30])

        for order in orders:
            if order.over_limit:
                assert by_id[order.key].status is SagaStatus.COMPENSATED, order.key
        cancelled = [key for key, attempt in cancels.items() if attempt.outcome == "cancelled"]
        for key in cancelled:
            failure = by_id[key].failure
            assert failure is not None, key
            assert (failure.kind, failure.step) == ("cancelled", "create_shipment"), failure
        assert len(cancelled) >= len(cancels) // 2, cancels

        assert orphans, "the killed worker held no order when it died"
        taken_over = [by_id[saga_id] for saga_id in orphans]
        assert all(record.is_terminal for record in taken_over)
        assert any(record.previous_owner == victim for record in taken_over)

        print_summary(
            records,
            counts=counts,
            orphans=len(orphans),
            cancels=cancels,
            times={
                "startup": started - began,
                "placing and cancelling": placed - started,
                "until all terminal": finished - started,
                "total": time.monotonic() - began,
                "CPU of this process": time.process_time() - cpu,
            },
        )
        passed = True
    finally:
        await cluster.close()
        if not passed:
            print(cluster.outputs())  # pytest shows it with the failure


# ---------------------------------------------------------------------- in process


class LosingPayment(PaymentService):
    """A payment service whose charges land but whose replies never arrive."""

    async def charge(self, call: Call, amount: int) -> Charge | Declined:
        await super().charge(call, amount)
        raise ConnectionError("payment: reply lost")


async def run_order(
    pg_dsn: str,
    pool: Any,
    schema: str,
    data: dict[str, Any],
    *,
    payment: type[PaymentService] = PaymentService,
) -> SagaRecord:
    """Run one order saga in this process, without faults or retry delays."""
    faults = Faults(0)
    services = OrderServices(
        InventoryService(pool, schema, faults),
        payment(pool, schema, faults),
        ShippingService(pool, schema, faults),
    )
    config = dataclasses.replace(ORDER_SAGA_CONFIG, max_retries_per_step=1, retry_delay_seconds=0)
    store = PostgresSagaStore(pg_dsn, schema=schema, table="sagas", max_size=2)
    async with store, SagaManager(store) as manager:
        manager.register(OrderSaga, factory=lambda: OrderSaga(services), config=config)
        return await manager.execute(OrderSaga.name, data, timeout=30)


async def effects_of(pool: Any, schema: str, order_id: str) -> Counter[str]:
    """How often each operation was applied for the order (the services' journal)."""
    rows = await pool.fetch(
        f'SELECT operation FROM "{schema}".service_effects WHERE order_id = $1', order_id
    )
    return Counter(row["operation"] for row in rows)


ORDER = {"customer": "ann", "items": [{"sku": "sku-01", "qty": 2}], "amount": 120}


async def test_an_order_reserves_charges_and_ships_once(
    pg_dsn: str, pool: Any, schema: str
) -> None:
    """A good order completes with one reservation, one charge and one shipment."""
    record = await run_order(pg_dsn, pool, schema, ORDER)
    assert record.status is SagaStatus.COMPLETED, record.error
    assert await effects_of(pool, schema, record.saga_id) == Counter(
        {"reserve": 1, "charge": 1, "ship": 1}
    )
    assert record.steps["reserve_stock"].output == {"reserved": {"sku-01": 2}}


async def test_a_declined_card_releases_the_stock(pg_dsn: str, pool: Any, schema: str) -> None:
    """Over the card limit: the charge fails as a business decision and stock comes back."""
    record = await run_order(pg_dsn, pool, schema, {**ORDER, "amount": CARD_LIMIT + 1})
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert (record.failure.kind, record.failure.step) == ("step_failed", "charge_payment")
    assert await effects_of(pool, schema, record.saga_id) == Counter({"reserve": 1, "release": 1})
    stock = await pool.fetchval(
        f'SELECT available FROM "{schema}".inventory_stock WHERE sku = $1', "sku-01"
    )
    assert stock == DEFAULT_CATALOGUE["sku-01"]


async def test_missing_stock_declines_the_order(pg_dsn: str, pool: Any, schema: str) -> None:
    """Asking for more than the stock fails the first step and reserves nothing."""
    items = [{"sku": "sku-01", "qty": 1}, {"sku": "sku-rare-2", "qty": 99}]
    record = await run_order(pg_dsn, pool, schema, {**ORDER, "items": items})
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert record.failure.message.endswith("out of stock: sku-rare-2")
    assert await effects_of(pool, schema, record.saga_id) == Counter()


async def test_a_charge_whose_reply_was_lost_is_refunded(
    pg_dsn: str, pool: Any, schema: str
) -> None:
    """compensate_failed: the charge failed for the saga but landed, so it is refunded."""
    record = await run_order(pg_dsn, pool, schema, ORDER, payment=LosingPayment)
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert (record.failure.kind, record.failure.step) == ("step_error", "charge_payment")
    assert record.steps["charge_payment"].attempts == 2
    assert await effects_of(pool, schema, record.saga_id) == Counter(
        {"reserve": 1, "charge": 1, "refund": 1, "release": 1}
    )


async def test_services_apply_a_repeated_request_once(pool: Any, schema: str) -> None:
    """The same request twice (a retry) is applied once; undoing twice undoes once."""
    services = OrderServices.connect(pool, schema)
    call = Call("order-1", "order-1:charge", attempt=1)
    first = await services.payment.charge(call, 50)
    again = await services.payment.charge(dataclasses.replace(call, attempt=2), 50)
    assert first == again
    assert await services.payment.refund(Call("order-1", "order-1:refund")) is True
    assert await services.payment.refund(Call("order-1", "order-1:refund", 2)) is False
    assert await services.shipping.cancel(Call("order-1", "order-1:unship")) is False
    assert await effects_of(pool, schema, "order-1") == Counter({"charge": 1, "refund": 1})


def test_faults_depend_only_on_key_attempt_and_point() -> None:
    """The same call fails at the same point every time; the rate is about right."""
    faults = Faults(0.25)
    calls = [Call("o", f"o:{n}", attempt) for n in range(400) for attempt in (1, 2)]
    first = [faults.strikes(call, "reply") for call in calls]
    assert first == [faults.strikes(call, "reply") for call in calls]
    assert 0.15 < sum(first) / len(first) < 0.35
    assert not any(Faults(0).strikes(call, "request") for call in calls)
    with pytest.raises(ServiceUnavailableError):
        faults.check("payment", calls[first.index(True)], "reply")


def test_settings_come_from_the_environment() -> None:
    """Every ``ORDER_SERVICE_*`` variable is read; missing ones keep their defaults."""
    settings = Settings.from_env(
        {
            "ORDER_SERVICE_DSN": "postgresql://app@db/app",
            "ORDER_SERVICE_SCHEMA": "shop",
            "ORDER_SERVICE_LEASE_SECONDS": "2.5",
            "ORDER_SERVICE_CONCURRENCY": "8",
            "ORDER_SERVICE_LOG_LEVEL": "debug",
        }
    )
    assert (settings.dsn, settings.schema, settings.table) == (
        "postgresql://app@db/app",
        "shop",
        "sagas",
    )
    assert (settings.lease_seconds, settings.concurrency, settings.log_level) == (2.5, 8, "DEBUG")
    assert "app@db" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SCHEMA", "shop; DROP TABLE x"),
        ("LEASE_SECONDS", "0"),
        ("CONCURRENCY", "many"),
        ("FAULT_RATE", "2"),
    ],
)
def test_settings_refuse_bad_values(variable: str, value: str) -> None:
    """A bad variable is refused with its name in the message."""
    with pytest.raises(ValueError, match=f"ORDER_SERVICE_{variable}"):
        Settings.from_env({f"ORDER_SERVICE_{variable}": value})


def build_app(settings: Settings) -> FastAPI:
    """The example's API on ``settings`` (imported here: FastAPI is optional)."""
    from examples.order_service.app import create_app

    return create_app(settings)


async def test_the_api_enqueues_reads_and_cancels(pg_dsn: str, pool: Any, schema: str) -> None:
    """The API only enqueues; a worker compensates the order it was asked to cancel."""
    require_http_stack()
    import httpx

    # Importing FastAPI and building the app's models takes long enough to trip the
    # blocking check: done in a thread.
    app = await asyncio.to_thread(build_app, Settings(dsn=pg_dsn, schema=schema))
    transport = httpx.ASGITransport(app=app)
    http = await asyncio.to_thread(http_client, "http://order-service", transport)
    async with app.router.lifespan_context(app), http:
        placed = await http.post("/orders", json=ORDER, headers={"Idempotency-Key": "o-1"})
        assert (placed.status_code, placed.json()) == (202, {"order_id": "o-1"})
        again = await http.post("/orders", json=ORDER, headers={"Idempotency-Key": "o-1"})
        assert again.json() == {"order_id": "o-1"}
        shown = (await http.get("/orders/o-1")).json()
        assert (shown["status"], shown["steps"], shown["failure"]) == ("pending", [], None)

        cancel = await http.post("/orders/o-1/cancel", json={"reason": "changed my mind"})
        assert cancel.status_code == 202
        assert cancel.json()["cancel_requested_at"] is not None

        assert (await http.get("/orders/nope")).status_code == 404
        assert (await http.post("/orders/nope/cancel")).status_code == 404
        bad_key = await http.post("/orders", json=ORDER, headers={"Idempotency-Key": " o "})
        assert bad_key.status_code == 400
        assert (await http.post("/orders", json={**ORDER, "items": []})).status_code == 422

        # A worker (here, in this process) claims the cancel request and compensates.
        store = PostgresSagaStore(pg_dsn, schema=schema, table="sagas", max_size=2)
        services = OrderServices.connect(pool, schema)
        async with store, SagaManager(store) as worker:
            worker.register(OrderSaga, factory=lambda: OrderSaga(services))
            stop = asyncio.Event()
            serving = asyncio.create_task(worker.serve(concurrency=2, stop=stop))
            record = await worker.wait("o-1", timeout=20)
            stop.set()
            await serving
        assert record.status is SagaStatus.COMPENSATED
        shown = (await http.get("/orders/o-1")).json()
        assert shown["failure"]["kind"] == "cancelled"
        assert shown["failure"]["message"].endswith("changed my mind")
        assert (await http.post("/orders/o-1/cancel")).status_code == 409
        assert await effects_of(pool, schema, "o-1") == Counter()
