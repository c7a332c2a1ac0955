"""Measure what a 3-step saga costs on SQLiteSagaStore: writes, commits, time.

Usage (from the repository root)::

    .venv/bin/python tests/support/sqlite_measure.py [--sagas 100] [--total 100]
        [--synchronous FULL]

Runs ``--total`` sagas one after another, then with ``--sagas`` of them in flight at a
time, on a fresh file each time, and prints the store's ``writes`` and ``commits``
counters per saga and the throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from lexigram.events.sagas import SagaBase, SagaContext, SagaManager, saga_step
from lexigram.events.sagas.sqlite import SQLiteSagaStore


class ThreeSteps(SagaBase):
    """Three steps, one compensable; the saga the tests and this script run."""

    name = "three_steps"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        ctx["reserved"] = True

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        ctx["reserved"] = False

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> dict[str, int]:
        return {"charged": ctx.get("n", 0)}

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> None:
        ctx["confirmed"] = True


async def measure(path: Path, sagas: int, total: int, synchronous: str, *, concurrent: bool) -> str:
    """Run ``total`` sagas, ``sagas`` at a time (or one by one), and describe the cost."""
    async with SQLiteSagaStore(path, synchronous=synchronous) as store:
        async with SagaManager(store) as manager:
            manager.register(ThreeSteps)
            await store.load("warm-up")  # open the file and create the schema first
            started = time.perf_counter()
            if concurrent:
                in_flight = asyncio.Semaphore(sagas)

                async def one() -> None:
                    async with in_flight:
                        await manager.execute("three_steps")

                await asyncio.gather(*(one() for _ in range(total)))
            else:
                for _ in range(total):
                    await manager.execute("three_steps")
            elapsed = time.perf_counter() - started
        return (
            f"{f'{sagas} in flight' if concurrent else 'sequential':>13}: {total} sagas, "
            f"{store.writes} writes ({store.writes / total:.2f}/saga), "
            f"{store.commits} commits ({store.commits / total:.2f}/saga), "
            f"{total / elapsed:,.0f} sagas/s"
        )


def main() -> None:
    """Parse arguments and print both measurements."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sagas", type=int, default=100, help="sagas in flight")
    parser.add_argument("--total", type=int, default=None, help="sagas run (default --sagas)")
    parser.add_argument("--synchronous", default="FULL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for concurrent in (False, True):
            path = Path(folder) / f"{concurrent}.db"
            total = args.total or args.sagas
            run = measure(path, args.sagas, total, args.synchronous, concurrent=concurrent)
            print(asyncio.run(run))


if __name__ == "__main__":
    main()
