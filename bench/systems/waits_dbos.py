"""DBOS Transact waiting workflows: ``DBOS.recv_async`` in a worker, ``DBOSClient.send_async``.

The roles and the phases are ``waits_bench``'s. The workflow mirrors lexigram's waiting
saga: a step, then ``await DBOS.recv_async("go", timeout_seconds=...)`` (DBOS's documented
way for a workflow to wait for a message), then a step recording ``t_resume`` when its
body starts and one recording ``t_done``. The timer workflow sleeps in
``DBOS.sleep_async`` (DBOS's durable sleep) instead.

- Worker: ``DBOS(config)``, ``DBOS.launch()``; it starts the workflows itself
  (``SetWorkflowID`` + ``DBOS.start_workflow_async``), since a DBOS workflow waits in the
  process that runs it. A workflow counts as parked once its ``recv`` registered its
  waiter: DBOS's own table of waiters (``notifications_map``, a private attribute read only
  here) says how many did; a sleeping one once the workflow reached the sleep and the
  thread pool that records it had nothing queued.
- Client: ``DBOSClient(system_database_url=...)`` and ``send_async(workflow_id, message,
  "go")``.
- Notifications: on PostgreSQL DBOS uses ``LISTEN/NOTIFY`` (its default); on SQLite it
  polls every waiter's messages every ``notification_listener_polling_interval_sec``
  (default 1 s): the benchmark sets ``--dbos-poll`` (0.1 s), as the service benchmark
  shortens the queue's polling interval, to bring it closer to what notifications give.
  One round of polls is one query per waiting workflow, so it still takes longer the
  more workflows wait.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import time
from collections import Counter
from typing import Any

from dbos import DBOS, DBOSClient, DBOSConfig, SetWorkflowID

from bench.systems.waits_bench import TIMER_SECONDS, WAIT_SECONDS, WaitsSystem, role_main

Ctx = dict[str, Any]
APP = "bench"
TOPIC = "go"
ENDED = ("SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")

REACHED: Counter[str] = Counter()
"""Workflows that reached their wait, per id prefix (the ``prefix-number`` ids)."""


@DBOS.step()
async def prepare(ctx: Ctx) -> Ctx:
    return {"prepared": True}


@DBOS.step()
async def resume(ctx: Ctx) -> Ctx:
    return {"t_resume": time.time()}


@DBOS.step()
async def finish(ctx: Ctx) -> Ctx:
    return {"t_done": time.time()}


def _reached() -> None:
    workflow_id = DBOS.workflow_id
    assert workflow_id is not None
    REACHED[workflow_id.rsplit("-", 1)[0]] += 1


@DBOS.workflow()
async def waiting_order(ctx: Ctx) -> Ctx:
    ctx.update(await prepare(ctx))
    _reached()
    message = await DBOS.recv_async(TOPIC, timeout_seconds=WAIT_SECONDS)
    ctx.update(await resume(ctx))
    ctx.update(await finish(ctx))
    ctx["ok"] = message is not None
    return ctx


@DBOS.workflow()
async def sleeping_order(ctx: Ctx) -> Ctx:
    ctx.update(await prepare(ctx))
    _reached()
    await DBOS.sleep_async(TIMER_SECONDS)
    ctx.update(await resume(ctx))
    ctx["ok"] = True
    return ctx


WORKFLOWS = {"signal": waiting_order, "timer": sleeping_order}


def _url(args: argparse.Namespace) -> str:
    return f"sqlite:///{args.location}" if args.store == "sqlite" else args.location


def _waiters(workflow_ids: set[str]) -> int:
    """How many of these workflows wait in ``recv`` now.

    DBOS's table of waiters is a private attribute: ``(key, (workflow id, topic, shard),
    event)`` entries.
    """
    from dbos import _dbos

    instance = _dbos._dbos_global_instance
    assert instance is not None
    waiting = instance._sys_db.notifications_map.snapshot()
    return sum(1 for _key, (workflow_id, *_rest), _event in waiting if workflow_id in workflow_ids)


class DBOSWaits(WaitsSystem):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client: DBOSClient | None = None
        self.launched = False

    async def open(self) -> dict[str, Any]:
        args = self.args
        info: dict[str, Any] = {"version": importlib.metadata.version("dbos")}
        if args.store == "sqlite":
            info["notification_polling_sec"] = args.dbos_poll
        if args.role == "client":
            self.client = DBOSClient(system_database_url=_url(args), application_name=APP)
            return info
        config: DBOSConfig = {
            "name": APP,
            "system_database_url": _url(args),
            "log_level": "WARNING",
            "notification_listener_polling_interval_sec": args.dbos_poll,
        }
        DBOS(config=config)
        DBOS.launch()
        self.launched = True
        logging.getLogger("dbos").setLevel(logging.WARNING)
        return info

    async def serve(self, stop: asyncio.Event) -> None:
        await stop.wait()  # DBOS's workflows run as tasks on this loop

    async def start(self, saga_id: str, kind: str) -> None:
        with SetWorkflowID(saga_id):
            await DBOS.start_workflow_async(WORKFLOWS[kind], {})

    async def parked(self, saga_ids: list[str], kind: str) -> int:
        reached = REACHED[saga_ids[0].rsplit("-", 1)[0]]
        if reached < len(saga_ids):
            return reached
        if kind == "signal":
            return _waiters(set(saga_ids))
        await asyncio.to_thread(lambda: None)  # the sleeps queued before it were recorded
        await asyncio.sleep(0.2)
        return reached

    async def signal(self, saga_id: str) -> None:
        assert self.client is not None
        await self.client.send_async(saga_id, {"ok": True}, TOPIC)

    async def ended(self, saga_id: str) -> bool:
        assert self.client is not None
        found = await self.client.list_workflows_async(
            workflow_ids=[saga_id], load_input=False, load_output=False
        )
        return bool(found) and found[0].status in ENDED

    async def results(self, saga_ids: list[str]) -> dict[str, dict[str, Any]]:
        assert self.client is not None
        found = await self.client.list_workflows_async(
            workflow_ids=saga_ids, load_input=False, load_output=True
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
    role_main(DBOSWaits, "dbos")
