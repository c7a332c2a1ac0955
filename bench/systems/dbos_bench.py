"""DBOS Transact: a durable ``@DBOS.workflow()`` calling three ``@DBOS.step()`` steps.

Compensation is DBOS's documented pattern: a ``try``/``except`` in the workflow that calls
the undo steps of the completed steps, in reverse order. Each step returns a dict the
workflow merges into its context (a step's output is what DBOS checkpoints). Step 3 of
the compensation workload raises (DBOS steps are not retried by default).

"In flight" = concurrent async workflows: N worker coroutines, each awaiting one workflow
call after the other on this process's event loop (no queue).

System database:

- ``sqlite``: ``system_database_url="sqlite:///<fresh file>"``. DBOS opens SQLite through
  SQLAlchemy/pysqlite with ``BEGIN IMMEDIATE`` transactions and leaves ``journal_mode`` and
  ``synchronous`` at SQLite's defaults (``DELETE`` and ``FULL``). To give it the same
  durability as lexigram's store, the harness creates the file first with ``PRAGMA
  journal_mode=<mode>`` (WAL is persistent in the file) and, when the ``synchronous``
  DBOS's connections report differs from the one requested, sets it on every connection
  of DBOS's engine. Both values are then read back through DBOS's own engine and
  reported.
- ``postgres``: a freshly created database (``dbos_bench``) on the same server; DBOS's
  default pool.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sqlite3
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig, WorkflowHandleAsync

from bench.systems._common import (
    Bench,
    Options,
    fresh_sqlite_path,
    gate,
    main,
    postgres_version,
    recreate_database,
    remove_sqlite,
)

Ctx = dict[str, Any]
PG_DATABASE = "dbos_bench"


class StepFailedError(Exception):
    """Step 3's business failure in the compensation workload."""


@DBOS.step()
async def reserve(ctx: Ctx) -> Ctx:
    return {"reserved": True}


@DBOS.step()
async def reserve_suspends(ctx: Ctx) -> Ctx:
    await gate().enter()
    return {"reserved": True}


@DBOS.step()
async def release(ctx: Ctx) -> Ctx:
    return {"reserved": False}


@DBOS.step()
async def charge(ctx: Ctx) -> Ctx:
    return {"charged": ctx["i"]}


@DBOS.step()
async def refund(ctx: Ctx) -> Ctx:
    return {"charged": None}


@DBOS.step()
async def confirm(ctx: Ctx) -> Ctx:
    return {"confirmed": True}


@DBOS.step()
async def confirm_fails(ctx: Ctx) -> Ctx:
    raise StepFailedError("declined")


@DBOS.step()
async def unconfirm(ctx: Ctx) -> Ctx:
    return {"confirmed": False}


@DBOS.workflow()
async def order_workflow(ctx: Ctx) -> bool:
    undo = []
    try:
        ctx.update(await reserve(ctx))
        undo.append(release)
        ctx.update(await charge(ctx))
        undo.append(refund)
        ctx.update(await confirm(ctx))
        undo.append(unconfirm)
    except Exception:
        for compensation in reversed(undo):
            ctx.update(await compensation(ctx))
        return False
    return True


@DBOS.workflow()
async def failing_order_workflow(ctx: Ctx) -> bool:
    undo = []
    try:
        ctx.update(await reserve(ctx))
        undo.append(release)
        ctx.update(await charge(ctx))
        undo.append(refund)
        ctx.update(await confirm_fails(ctx))
        undo.append(unconfirm)
    except Exception:
        for compensation in reversed(undo):
            ctx.update(await compensation(ctx))
        return False
    return True


@DBOS.workflow()
async def suspending_order_workflow(ctx: Ctx) -> bool:
    ctx.update(await reserve_suspends(ctx))
    ctx.update(await charge(ctx))
    ctx.update(await confirm(ctx))
    return True


def _engine() -> Any:
    """DBOS's system database engine (a private attribute: used only to read pragmas)."""
    from dbos import _dbos

    instance = _dbos._dbos_global_instance
    return instance._sys_db.engine if instance is not None else None


def _read_pragmas() -> dict[str, str]:
    import sqlalchemy as sa

    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    with _engine().connect() as conn:
        journal = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
        sync = conn.execute(sa.text("PRAGMA synchronous")).scalar()
    return {"journal_mode": str(journal).upper(), "synchronous": names.get(int(sync), str(sync))}


def _force_synchronous(level: str) -> None:
    import sqlalchemy as sa

    engine = _engine()

    def set_level(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA synchronous={level}")

    sa.event.listen(engine, "connect", set_level)
    engine.dispose()  # pooled connections reconnect, now with the listener


class DBOSBench(Bench):
    def __init__(self, options: Options) -> None:
        self.failing = options.workload == "compensate"
        self.handles: list[WorkflowHandleAsync[bool]] = []
        self.sqlite_path: Path | None = None

    async def setup(self, options: Options) -> dict[str, Any]:
        info: dict[str, Any] = {"version": importlib.metadata.version("dbos")}
        if options.store == "sqlite":
            self.sqlite_path = fresh_sqlite_path(options, "dbos")
            conn = sqlite3.connect(self.sqlite_path)
            conn.execute(f"PRAGMA journal_mode={options.journal_mode}")
            conn.close()
            url = f"sqlite:///{self.sqlite_path}"
        else:
            dsn = await recreate_database(options.pg_dsn, PG_DATABASE)
            url = dsn
            info["postgres"] = {"server_version": await postgres_version(dsn)}
        config: DBOSConfig = {
            "name": "bench",
            "system_database_url": url,
            "log_level": "WARNING",
        }
        DBOS(config=config)
        DBOS.launch()
        logging.getLogger("dbos").setLevel(logging.WARNING)
        if options.store == "sqlite":
            found = _read_pragmas()
            forced = found["synchronous"] != options.synchronous
            if forced:
                _force_synchronous(options.synchronous)
            info["sqlite"] = {
                **_read_pragmas(),
                "default_synchronous": found["synchronous"],
                "synchronous_set_by_harness": forced,
                "how": "file created with PRAGMA journal_mode; pragmas read via DBOS's engine",
            }
        return info

    async def run_one(self, i: int) -> bool:
        if self.failing:
            return not await failing_order_workflow({"i": i})
        return bool(await order_workflow({"i": i}))

    async def start_suspended(self, i: int) -> None:
        handle = await DBOS.start_workflow_async(suspending_order_workflow, {"i": i})
        self.handles.append(handle)

    async def finish_suspended(self) -> int:
        done = 0
        for handle in self.handles:
            done += await handle.get_result() is True
        self.handles = []
        return done

    async def teardown(self) -> None:
        DBOS.destroy()
        if self.sqlite_path is not None:
            remove_sqlite(self.sqlite_path)


if __name__ == "__main__":
    main(DBOSBench, "dbos", ("sqlite", "postgres"))
