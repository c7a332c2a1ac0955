"""Run N in-memory sagas in one process: a fixed workload for instruction counts.

Timings on a shared machine swing by tens of percent from run to run; instruction counts do
not. Compare two versions of the engine with callgrind, per saga, as the difference
between two sizes (which cancels start-up)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/hot_path.py complete 100
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/hot_path.py complete 600
    # (I refs of the second - I refs of the first) / 500 = instructions per saga

``complete`` runs the benchmark's 3-step saga; ``compensate`` fails its last step.
"""

from __future__ import annotations

import asyncio
import sys

from lexigram.events.sagas import (
    SagaBase,
    SagaContext,
    SagaManager,
    SagaStepResult,
    saga_step,
)


class OrderSaga(SagaBase):
    name = "complete"

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
        return None


class FailingOrderSaga(OrderSaga):
    name = "compensate"

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> SagaStepResult | None:
        return SagaStepResult.fail("declined")


async def run(name: str, count: int) -> None:
    manager = SagaManager()
    manager.register(OrderSaga)
    manager.register(FailingOrderSaga)
    for i in range(count):
        await manager.execute(name, {"i": i})
    await manager.close()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
