"""DBOS Transact as a service: ``DBOSClient.enqueue_async`` in one process, queue workers.

The workflow is the benchmark's 3-step workflow (``dbos_bench``: three ``@DBOS.step()``
functions whose outputs the workflow merges into its context), with step 1 and step 3
recording the times the service benchmark compares (``_service_roles``).

- Workers: ``DBOS(config)`` with an ``executor_id`` of their own (DBOS counts a worker's
  running workflows per executor), ``DBOS.launch()``, then ``DBOS.register_queue_async(
  QUEUE, worker_concurrency=C, polling_interval_sec=POLL)``: every worker dequeues from the
  queue, at most ``C`` workflows at once. DBOS queues are polled (no notification);
  its default interval is 1 s, the benchmark uses :data:`POLL` (see there).
- The enqueuer: ``DBOSClient(system_database_url=...)`` and ``enqueue_async({"workflow_name":
  ..., "queue_name": QUEUE, "workflow_id": ...}, ctx)``, DBOS's documented way to enqueue
  from another process.
- ``prepare``: one ``DBOS.launch()`` creates the system database's schema and the queue
  before the workers start (the client never migrates).

SQLite: the file is created by the parent in the requested journal mode (WAL persists in
the file); DBOS's connections keep SQLite's default ``synchronous=FULL``, the benchmark's
default too. The values in effect are read back through DBOS's engine by ``prepare``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import time
from typing import Any

from dbos import DBOS, DBOSClient, DBOSConfig

from bench.systems._service_roles import ServiceSystem, role_main

Ctx = dict[str, Any]
QUEUE = "bench_service"
APP = "bench"
POLL = 0.1
"""Seconds between two polls of the queue by a DBOS worker (DBOS's default: 1 s).

A tenth of the default, so that polling does not cap DBOS's throughput: a worker dequeues
at most ``worker_concurrency`` workflows per poll, 640 a second at 64, above what it runs.
The pickup latency it gives is about half of it on average.
"""

WORKER = -1
ENDED = ("SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")


@DBOS.step()
async def reserve(ctx: Ctx) -> Ctx:
    return {"t_pickup": time.time(), "worker": WORKER, "reserved": True}


@DBOS.step()
async def charge(ctx: Ctx) -> Ctx:
    return {"charged": ctx["i"]}


@DBOS.step()
async def confirm(ctx: Ctx) -> Ctx:
    return {"confirmed": True, "t_done": time.time()}


@DBOS.step()
async def release(ctx: Ctx) -> Ctx:
    return {"reserved": False}


@DBOS.step()
async def refund(ctx: Ctx) -> Ctx:
    return {"charged": None}


@DBOS.workflow()
async def service_order(ctx: Ctx) -> Ctx:
    undo = []
    try:
        ctx.update(await reserve(ctx))
        undo.append(release)
        ctx.update(await charge(ctx))
        undo.append(refund)
        ctx.update(await confirm(ctx))
    except Exception:
        for compensation in reversed(undo):
            ctx.update(await compensation(ctx))
        ctx["ok"] = False
        return ctx
    ctx["ok"] = True
    return ctx


def _url(args: argparse.Namespace) -> str:
    return f"sqlite:///{args.location}" if args.store == "sqlite" else args.location


def _read_pragmas() -> dict[str, str]:
    """``journal_mode`` and ``synchronous`` of DBOS's connections (a private attribute)."""
    import sqlalchemy as sa
    from dbos import _dbos

    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    instance = _dbos._dbos_global_instance
    assert instance is not None
    with instance._sys_db.engine.connect() as conn:
        journal = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
        sync = conn.execute(sa.text("PRAGMA synchronous")).scalar()
    return {"journal_mode": str(journal).upper(), "synchronous": names.get(int(sync), str(sync))}


class DBOSService(ServiceSystem):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client: DBOSClient | None = None
        self.launched = False

    async def open(self) -> dict[str, Any]:
        global WORKER
        args = self.args
        info: dict[str, Any] = {
            "version": importlib.metadata.version("dbos"),
            "polling_interval_sec": POLL,
        }
        if args.role == "enqueue":
            self.client = DBOSClient(system_database_url=_url(args), application_name=APP)
            return info
        WORKER = args.index
        config: DBOSConfig = {
            "name": APP,
            "system_database_url": _url(args),
            "log_level": "WARNING",
            "executor_id": f"{args.role}-{args.index}",
        }
        DBOS(config=config)
        DBOS.launch()
        self.launched = True
        logging.getLogger("dbos").setLevel(logging.WARNING)
        await DBOS.register_queue_async(
            QUEUE, worker_concurrency=args.concurrency, polling_interval_sec=POLL
        )
        if args.store == "sqlite" and args.role == "prepare":
            info["sqlite"] = _read_pragmas()
        return info

    async def prepare(self) -> None:
        """``open`` launched DBOS (schema) and registered the queue."""

    async def serve(self, stop: asyncio.Event) -> None:
        await stop.wait()  # DBOS's queue threads do the work

    async def enqueue(self, i: int, saga_id: str) -> None:
        assert self.client is not None
        await self.client.enqueue_async(
            {
                "workflow_name": service_order.__qualname__,
                "queue_name": QUEUE,
                "workflow_id": saga_id,
            },
            {"i": i},
        )

    async def ended(self, saga_id: str) -> bool:
        assert self.client is not None
        found = await self.client.list_workflows_async(
            workflow_ids=[saga_id], load_input=False, load_output=False
        )
        return bool(found) and found[0].status in ENDED

    async def results(self, saga_ids: list[str]) -> dict[str, dict[str, Any]]:
        assert self.client is not None
        prefix = saga_ids[0].rsplit("-", 1)[0] + "-"
        found = await self.client.list_workflows_async(
            workflow_id_prefix=prefix, load_input=False, load_output=True
        )
        results = {}
        for status in found:
            output = status.output if isinstance(status.output, dict) else {}
            results[status.workflow_id] = {
                **output,
                "ended": status.status in ENDED,
                "ok": status.status == "SUCCESS" and bool(output.get("ok")),
            }
        return results

    async def close(self) -> None:
        if self.client is not None:
            self.client.destroy()
        if self.launched:
            DBOS.destroy()


if __name__ == "__main__":
    role_main(DBOSService, "dbos")
