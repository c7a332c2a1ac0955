"""sagaz: a declarative ``Saga`` with three ``@action`` steps and three ``@compensate``.

Steps 2 and 3 ``depends_on`` the step before (without it sagaz runs independent steps
concurrently). Each step returns a dict that sagaz merges into the context. The config is
sagaz's fastest: its default in-memory storage, metrics and logging listeners off. A
``Saga`` instance holds the context of the run it executes, so every worker coroutine
reuses one instance of its own (and each suspended saga gets its own). Step 3 of the
compensation workload raises; ``run`` compensates, then re-raises.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

from sagaz import Saga, SagaConfig, action, compensate  # type: ignore[import-untyped]

from bench.systems._common import Bench, Options, gate, main

Ctx = dict[str, Any]


class StepFailedError(Exception):
    """Step 3's business failure in the compensation workload."""


class OrderSaga(Saga):  # type: ignore[misc]
    saga_name = "bench_order"

    @action("reserve")  # type: ignore[untyped-decorator]
    async def reserve(self, ctx: Ctx) -> Ctx:
        return {"reserved": True}

    @compensate("reserve")  # type: ignore[untyped-decorator]
    async def release(self, ctx: Ctx) -> None:
        ctx["reserved"] = False

    @action("charge", depends_on=["reserve"])  # type: ignore[untyped-decorator]
    async def charge(self, ctx: Ctx) -> Ctx:
        return {"charged": ctx["i"]}

    @compensate("charge")  # type: ignore[untyped-decorator]
    async def refund(self, ctx: Ctx) -> None:
        ctx["charged"] = None

    @action("confirm", depends_on=["charge"])  # type: ignore[untyped-decorator]
    async def confirm(self, ctx: Ctx) -> Ctx:
        return {"confirmed": True}

    @compensate("confirm")  # type: ignore[untyped-decorator]
    async def unconfirm(self, ctx: Ctx) -> None:
        ctx["confirmed"] = False


class FailingOrderSaga(OrderSaga):
    saga_name = "bench_order_failing"

    @action("confirm", depends_on=["charge"])  # type: ignore[untyped-decorator]
    async def confirm(self, ctx: Ctx) -> Ctx:
        raise StepFailedError("declined")


class SuspendingOrderSaga(OrderSaga):
    saga_name = "bench_order_suspending"

    @action("reserve")  # type: ignore[untyped-decorator]
    async def reserve(self, ctx: Ctx) -> Ctx:
        await gate().enter()
        return {"reserved": True}


def _config() -> Any:
    return SagaConfig(metrics=False, logging=False, tracing=False)


class SagazBench(Bench):
    def __init__(self, options: Options) -> None:
        self.failing = options.workload == "compensate"
        self.config = _config()
        self.idle: list[Saga] = []
        self.tasks: list[asyncio.Task[Ctx]] = []

    async def setup(self, options: Options) -> dict[str, Any]:
        storage = type(self.config.storage).__name__
        return {"version": importlib.metadata.version("sagaz"), "storage": storage}

    def _instance(self) -> Saga:
        if self.idle:
            return self.idle.pop()
        saga_class = FailingOrderSaga if self.failing else OrderSaga
        return saga_class(config=self.config)

    async def run_one(self, i: int) -> bool:
        saga = self._instance()
        try:
            ctx = await saga.run({"i": i})
        except StepFailedError:
            ok = self.failing
        else:
            ok = not self.failing and ctx.get("confirmed") is True
        self.idle.append(saga)
        return ok

    async def start_suspended(self, i: int) -> None:
        saga = SuspendingOrderSaga(config=self.config)
        self.tasks.append(asyncio.create_task(saga.run({"i": i})))

    async def finish_suspended(self) -> int:
        results = await asyncio.gather(*self.tasks)
        self.tasks = []
        return sum(ctx.get("confirmed") is True for ctx in results)

    async def teardown(self) -> None:
        return None


if __name__ == "__main__":
    main(SagazBench, "sagaz", ("memory",))
