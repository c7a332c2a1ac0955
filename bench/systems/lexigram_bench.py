"""lexigram-events: a ``SagaBase`` with three steps and three compensations, run by ``execute``.

Stores: ``memory`` (``InMemorySagaStore``), ``sqlite`` (``SQLiteSagaStore`` on a fresh file
with the requested ``journal_mode`` and ``synchronous``), ``postgres``
(``PostgresSagaStore`` on a freshly created database, default pool). A durable store whose
module does not import yet is reported as not available.

Sequential is ``await manager.execute(...)`` in a loop; ``--inflight N`` runs N such loops
at once. Step 3 of the compensation workload returns ``SagaStepResult.fail`` (a business
failure: compensated at once, not retried).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

from bench.systems._common import (
    Bench,
    Options,
    emit,
    fresh_sqlite_path,
    gate,
    main,
    postgres_version,
    recreate_database,
    remove_sqlite,
)
from lexigram.events.sagas import (
    SagaBase,
    SagaContext,
    SagaManager,
    SagaStatus,
    SagaStepResult,
    SagaStore,
    saga_step,
)

PG_DATABASE = "lexigram_bench"


class OrderSaga(SagaBase):
    name = "bench_order"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        ctx["reserved"] = True

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        ctx["reserved"] = False

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> None:
        ctx["charged"] = ctx["i"]

    @saga_step("charge", compensation=True)
    async def refund(self, ctx: SagaContext) -> None:
        ctx["charged"] = None

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> SagaStepResult | None:
        ctx["confirmed"] = True
        return None

    @saga_step("confirm", compensation=True)
    async def unconfirm(self, ctx: SagaContext) -> None:
        ctx["confirmed"] = False


class FailingOrderSaga(OrderSaga):
    name = "bench_order_failing"

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> SagaStepResult | None:
        return SagaStepResult.fail("declined")


class SuspendingOrderSaga(OrderSaga):
    name = "bench_order_suspending"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        await gate().enter()
        ctx["reserved"] = True


def _store_available(store: str) -> str | None:
    """Why the store's module does not import, or ``None`` when it does."""
    module = {
        "sqlite": "lexigram.events.sagas.sqlite",
        "postgres": "lexigram.events.sagas.postgres",
    }
    if store not in module:
        return None
    try:
        importlib.import_module(module[store])
    except Exception as exc:  # any import failure means "not available yet"
        return f"{type(exc).__name__}: {exc}"
    return None


class LexigramBench(Bench):
    def __init__(self, options: Options) -> None:
        self.options = options
        failing = options.workload == "compensate"
        self.saga_name = FailingOrderSaga.name if failing else OrderSaga.name
        self.expected = SagaStatus.COMPENSATED if failing else SagaStatus.COMPLETED
        self.suspended: list[str] = []
        self.store: SagaStore | None = None
        self.manager: SagaManager | None = None
        self.sqlite_path: Path | None = None

    async def setup(self, options: Options) -> dict[str, Any]:
        info: dict[str, Any] = {"version": importlib.metadata.version("lexigram-events")}
        if options.store == "sqlite":
            from lexigram.events.sagas.sqlite import SQLiteSagaStore

            self.sqlite_path = fresh_sqlite_path(options, "lexigram")
            self.store = SQLiteSagaStore(
                self.sqlite_path,
                synchronous=options.synchronous,
                journal_mode=options.journal_mode,
            )
            info["sqlite"] = {
                "journal_mode": options.journal_mode,
                "synchronous": options.synchronous,
                "how": "SQLiteSagaStore(path, synchronous=..., journal_mode=...)",
            }
        elif options.store == "postgres":
            from lexigram.events.sagas.postgres import PostgresSagaStore

            dsn = await recreate_database(options.pg_dsn, PG_DATABASE)
            self.store = PostgresSagaStore(dsn)
            info["postgres"] = {"server_version": await postgres_version(dsn)}
        self.manager = SagaManager(self.store)
        for saga in (OrderSaga, FailingOrderSaga, SuspendingOrderSaga):
            self.manager.register(saga)
        return info

    async def run_one(self, i: int) -> bool:
        assert self.manager is not None
        record = await self.manager.execute(self.saga_name, {"i": i})
        return record.status is self.expected

    async def start_suspended(self, i: int) -> None:
        assert self.manager is not None
        self.suspended.append(await self.manager.start(SuspendingOrderSaga.name, {"i": i}))

    async def finish_suspended(self) -> int:
        assert self.manager is not None
        done = 0
        for saga_id in self.suspended:
            record = await self.manager.wait(saga_id)
            done += record.status is SagaStatus.COMPLETED
        self.suspended = []
        return done

    async def teardown(self) -> None:
        if self.manager is not None:
            await self.manager.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()
        if self.sqlite_path is not None:
            remove_sqlite(self.sqlite_path)


def _entry() -> None:
    import sys

    from bench.systems._common import parse_options

    options = parse_options("lexigram", ("memory", "sqlite", "postgres"))
    missing = _store_available(options.store)
    if missing is not None:
        emit(
            {
                "system": "lexigram",
                "workload": options.workload,
                "store": options.store,
                "inflight": options.inflight,
                "unavailable": missing,
            }
        )
        sys.exit(0)
    main(LexigramBench, "lexigram", ("memory", "sqlite", "postgres"))


if __name__ == "__main__":
    _entry()
