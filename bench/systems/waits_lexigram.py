"""lexigram-events parking sagas: ``enqueue`` and ``signal`` in a client, ``serve`` in a worker.

The roles and the phases are ``waits_bench``'s. The worker is ``SagaManager(store)`` calling
``serve(concurrency=C, stop=stop)`` (default poll interval); the client is a ``SagaManager``
on the same store that registers the sagas and only calls ``enqueue`` and ``signal``.
Stores: ``SQLiteSagaStore`` on one file shared by both processes (the requested
``journal_mode``/``synchronous``), or ``PostgresSagaStore`` (default pool) on one database.

Both sagas get a deadline of a day (``register(..., config=)``), as the waits guide
advises for sagas that wait: the default five minutes would end the first parked sagas
during a long run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import sqlite3
import time
from typing import Any

from bench.systems.waits_bench import TIMER_SECONDS, WAIT_SECONDS, WaitsSystem, role_main
from lexigram.events.sagas import (
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaManager,
    SagaStatus,
    SagaStore,
    saga_step,
)

SIGNAL = "go"
LOAD_CHUNK = 100
"""Sagas read at once when the client reads back what the sagas recorded."""


class WaitingSaga(SagaBase):
    name = "bench_waits"

    @saga_step("prepare")
    async def prepare(self, ctx: SagaContext) -> None:
        ctx["prepared"] = True

    @saga_step("resume", wait_for=SIGNAL)
    async def resume(self, ctx: SagaContext) -> None:
        ctx["t_resume"] = time.time()

    @saga_step("finish")
    async def finish(self, ctx: SagaContext) -> None:
        ctx["t_done"] = time.time()


class TimerSaga(SagaBase):
    name = "bench_waits_timer"

    @saga_step("prepare")
    async def prepare(self, ctx: SagaContext) -> None:
        ctx["prepared"] = True

    @saga_step("later", delay=TIMER_SECONDS)
    async def later(self, ctx: SagaContext) -> None:
        ctx["t_resume"] = time.time()


SAGAS = {"signal": WaitingSaga, "timer": TimerSaga}


class LexigramWaits(WaitsSystem):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store: SagaStore | None = None
        self.manager: SagaManager | None = None
        self.pg: Any = None  # the client's own connection, to count parked sagas

    async def open(self) -> dict[str, Any]:
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
        self.manager = SagaManager(self.store, worker_id=f"waits-{args.role}")
        config = SagaConfig(default_timeout_seconds=WAIT_SECONDS)
        for saga in SAGAS.values():
            self.manager.register(saga, config=config)
        await self.manager.get("warm-up")  # open the store (schema, connections) first
        return info

    async def serve(self, stop: asyncio.Event) -> None:
        assert self.manager is not None
        await self.manager.serve(concurrency=self.args.concurrency, stop=stop)

    async def start(self, saga_id: str, kind: str) -> None:
        assert self.manager is not None
        await self.manager.enqueue(SAGAS[kind].name, {}, saga_id)

    async def parked(self, saga_ids: list[str], kind: str) -> int:
        """Count them in the store's own columns (reading 100,000 records would decode each).

        Parked: the stored ``waiting`` is set and no worker holds the saga. The ids are
        zero-padded, so they are a range of the primary key.
        """
        first, last = saga_ids[0], saga_ids[-1]
        if self.args.store == "sqlite":
            return await asyncio.to_thread(_count_sqlite, self.args.location, first, last)
        if self.pg is None:
            import asyncpg

            self.pg = await asyncpg.connect(self.args.location)
        found = await self.pg.fetchval(
            "SELECT count(*) FROM lexigram_sagas WHERE saga_id BETWEEN $1 AND $2 "
            "AND waiting IS NOT NULL AND lease_owner IS NULL",
            first,
            last,
        )
        return int(found)

    async def signal(self, saga_id: str) -> None:
        assert self.manager is not None
        await self.manager.signal(saga_id, SIGNAL, {"ok": True})

    async def ended(self, saga_id: str) -> bool:
        assert self.store is not None
        record = await self.store.load(saga_id)
        return record is not None and record.status.is_terminal

    async def results(self, saga_ids: list[str]) -> dict[str, dict[str, Any]]:
        assert self.store is not None
        store = self.store
        found: dict[str, dict[str, Any]] = {}
        for first in range(0, len(saga_ids), LOAD_CHUNK):
            chunk = saga_ids[first : first + LOAD_CHUNK]
            for record in await asyncio.gather(*(store.load(i) for i in chunk)):
                if record is not None:
                    found[record.saga_id] = {
                        **record.data,
                        "ended": record.status.is_terminal,
                        "ok": record.status is SagaStatus.COMPLETED,
                    }
        return found

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
        if self.manager is not None:
            await self.manager.close()
        if self.store is not None:
            await self.store.close()


def _count_sqlite(path: str, first: str, last: str) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute(
            "SELECT count(*) FROM lexigram_sagas WHERE saga_id BETWEEN ? AND ? "
            "AND waiting_kind IS NOT NULL AND lease_owner IS NULL",
            (first, last),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


if __name__ == "__main__":
    role_main(LexigramWaits, "lexigram")
