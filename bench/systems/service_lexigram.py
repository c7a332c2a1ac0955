"""lexigram-events as a service: ``enqueue`` in one process, ``serve`` in worker processes.

The saga is the benchmark's 3-step saga (``lexigram_bench.OrderSaga``) with step 1 and
step 3 recording the times the service benchmark compares (``_service_roles``). Workers
are ``SagaManager(store, worker_id=...)`` calling ``serve(concurrency=C, stop=stop)`` with
the default poll interval; the enqueuer is a ``SagaManager`` that registers the saga and
only calls ``enqueue``. Stores: ``SQLiteSagaStore`` on one file shared by every process
(the requested ``journal_mode``/``synchronous``), or ``PostgresSagaStore`` (default pool)
on one database.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import time
from typing import Any

from bench.systems._service_roles import ServiceSystem, role_main
from bench.systems.lexigram_bench import OrderSaga
from lexigram.events.sagas import (
    SagaContext,
    SagaManager,
    SagaStatus,
    SagaStepResult,
    SagaStore,
    saga_step,
)

WORKER = -1
"""This process's worker number (set by the worker role; recorded by step 1)."""


class ServiceOrderSaga(OrderSaga):
    name = "bench_service_order"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        ctx["t_pickup"] = time.time()
        ctx["worker"] = WORKER
        ctx["reserved"] = True

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> SagaStepResult | None:
        ctx["confirmed"] = True
        ctx["t_done"] = time.time()
        return None


class LexigramService(ServiceSystem):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store: SagaStore | None = None
        self.manager: SagaManager | None = None

    async def open(self) -> dict[str, Any]:
        global WORKER
        args = self.args
        info: dict[str, Any] = {"version": importlib.metadata.version("lexigram-events")}
        if args.store == "sqlite":
            from lexigram.events.sagas.sqlite import SQLiteSagaStore

            self.store = SQLiteSagaStore(
                args.location, synchronous=args.synchronous, journal_mode=args.journal_mode
            )
            info["sqlite"] = {"journal_mode": args.journal_mode, "synchronous": args.synchronous}
        else:
            from lexigram.events.sagas.postgres import PostgresSagaStore

            self.store = PostgresSagaStore(args.location)
        if args.role == "worker":
            WORKER = args.index
        self.manager = SagaManager(self.store, worker_id=f"{args.role}-{args.index}")
        self.manager.register(ServiceOrderSaga)
        await self.manager.get("warm-up")  # open the store (schema, connections) first
        return info

    async def prepare(self) -> None:
        """The schema was created by ``open``."""

    async def serve(self, stop: asyncio.Event) -> None:
        assert self.manager is not None
        await self.manager.serve(concurrency=self.args.concurrency, stop=stop)

    async def enqueue(self, i: int, saga_id: str) -> None:
        assert self.manager is not None
        await self.manager.enqueue(ServiceOrderSaga.name, {"i": i}, saga_id)

    async def ended(self, saga_id: str) -> bool:
        assert self.store is not None
        record = await self.store.load(saga_id)
        return record is not None and record.status.is_terminal

    async def results(self, saga_ids: list[str]) -> dict[str, dict[str, Any]]:
        assert self.store is not None
        records = await self.store.list(saga_name=ServiceOrderSaga.name, limit=len(saga_ids) * 2)
        wanted = set(saga_ids)
        return {
            r.saga_id: {
                **r.data,
                "ended": r.status.is_terminal,
                "ok": r.status is SagaStatus.COMPLETED,
            }
            for r in records
            if r.saga_id in wanted
        }

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()
        if self.store is not None:
            await self.store.close()


if __name__ == "__main__":
    role_main(LexigramService, "lexigram")
