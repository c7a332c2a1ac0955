"""The baseline: a plain async function, three awaited steps and an undo list.

This is what the saga costs without any library: no persistence, no retries, no records.
Each step updates a dict; a failure runs the undo functions of the completed steps in
reverse order. ``python -m bench.systems.handwritten_bench --workload run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bench.systems._common import Bench, Options, gate, main

Ctx = dict[str, Any]
Step = Callable[[Ctx], Awaitable[None]]


class StepFailedError(Exception):
    """Step 3's business failure in the compensation workload."""


async def reserve(ctx: Ctx) -> None:
    ctx["reserved"] = True


async def release(ctx: Ctx) -> None:
    ctx["reserved"] = False


async def charge(ctx: Ctx) -> None:
    ctx["charged"] = ctx["i"]


async def refund(ctx: Ctx) -> None:
    ctx["charged"] = None


async def confirm(ctx: Ctx) -> None:
    ctx["confirmed"] = True


async def unconfirm(ctx: Ctx) -> None:
    ctx["confirmed"] = False


async def confirm_fails(ctx: Ctx) -> None:
    raise StepFailedError("declined")


async def reserve_suspends(ctx: Ctx) -> None:
    await gate().enter()
    ctx["reserved"] = True


async def order_saga(ctx: Ctx, first: Step = reserve, third: Step = confirm) -> bool:
    """Run the three steps; on failure undo the completed ones; return whether it completed."""
    undo: list[Step] = []
    try:
        await first(ctx)
        undo.append(release)
        await charge(ctx)
        undo.append(refund)
        await third(ctx)
        undo.append(unconfirm)
    except StepFailedError:
        for compensation in reversed(undo):
            await compensation(ctx)
        return False
    return True


class HandwrittenBench(Bench):
    def __init__(self, options: Options) -> None:
        self.expect_success = options.workload != "compensate"
        self.third = confirm if self.expect_success else confirm_fails
        self.tasks: list[asyncio.Task[bool]] = []

    async def setup(self, options: Options) -> dict[str, Any]:
        return {}

    async def run_one(self, i: int) -> bool:
        return await order_saga({"i": i}, third=self.third) is self.expect_success

    async def start_suspended(self, i: int) -> None:
        self.tasks.append(asyncio.create_task(order_saga({"i": i}, first=reserve_suspends)))

    async def finish_suspended(self) -> int:
        done = sum(await asyncio.gather(*self.tasks))
        self.tasks = []
        return done

    async def teardown(self) -> None:
        return None


if __name__ == "__main__":
    main(HandwrittenBench, "handwritten", ("memory",))
