"""Run N in-memory sagas in one process: a fixed workload for instruction counts.

Timings on a shared machine swing by tens of percent from run to run; instruction counts do
not. Compare two versions of the engine with callgrind, per saga, as the difference
between two sizes (which cancels start-up), from the repository root::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.hot_path run 100
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.hot_path run 600
    # (I refs of the second - I refs of the first) / 500 = instructions per saga

``run`` is the benchmark's 3-step saga; ``compensate`` fails its last step. The sagas are
the ones ``make bench`` measures (``bench/systems/lexigram_bench.py``).
"""

from __future__ import annotations

import asyncio
import sys

from bench.systems.lexigram_bench import FailingOrderSaga, OrderSaga
from lexigram.events.sagas import SagaManager


async def run(workload: str, count: int) -> None:
    manager = SagaManager()
    manager.register(OrderSaga)
    manager.register(FailingOrderSaga)
    name = FailingOrderSaga.name if workload == "compensate" else OrderSaga.name
    for i in range(count):
        await manager.execute(name, {"i": i})
    await manager.close()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
