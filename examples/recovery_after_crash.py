"""Recovery after a crash: a worker dies mid-step, a restarted worker finishes its sagas.

What happens:

1. The script starts a worker *process* that starts three shipment sagas on an SQLite
   file. Each saga packs its order, then starts shipping it — and while all three are
   shipping, the worker kills itself with SIGKILL (no cleanup, no graceful shutdown).
2. The script then plays the restarted worker: a new ``SagaManager`` on the same file,
   under the same worker name, calls ``recover()``. Every saga resumes from its last
   durable point: packing is not repeated, shipping (in flight at the crash) runs again —
   steps are at-least-once, so the shipping service receives the idempotency key — and
   notifying runs once.
3. It prints the log of every call the services received, from both processes.

Run it with ``python examples/recovery_after_crash.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.types import SagaRecord

DIRECTORY = Path(os.environ.get("LEXIGRAM_EXAMPLE_DIR", "demo-data"))
DATABASE = DIRECTORY / "recovery.db"
CALL_LOG = DIRECTORY / "recovery-calls.log"
WORKER_NAME = "shipping-worker"
ORDERS = ("ord-1", "ord-2", "ord-3")

shipping_started = 0
"""How many sagas entered the shipping step in this process."""
all_shipping = asyncio.Event()


def note(call: str) -> None:
    """Append a service call to the log shared by both processes."""
    with CALL_LOG.open("a", encoding="utf-8") as log:
        log.write(f"[pid {os.getpid()}] {call}\n")


class ShipmentSaga(SagaBase):
    name = "shipment"

    @saga_step("pack")
    async def pack(self, ctx: SagaContext) -> dict[str, str]:
        note(f"pack {ctx['order_id']}")
        return {"parcel": f"parcel-{ctx['order_id']}"}

    @saga_step("pack", compensation=True)
    async def unpack(self, ctx: SagaContext) -> None:
        note(f"unpack {ctx['order_id']}")

    @saga_step("ship")
    async def ship(self, ctx: SagaContext) -> dict[str, str]:
        global shipping_started
        note(f"ship {ctx['order_id']} (idempotency key {ctx.idempotency_key})")
        if os.environ.get("RECOVERY_DEMO_PHASE") == "doomed":
            shipping_started += 1
            if shipping_started == len(ORDERS):
                all_shipping.set()
            await asyncio.Event().wait()  # shipping takes long; the crash comes first
        return {"tracking": f"track-{ctx['order_id']}"}

    @saga_step("notify")
    async def notify(self, ctx: SagaContext) -> None:
        note(f"notify {ctx['order_id']} (tracking {ctx.step_results['ship']['tracking']})")


async def doomed_worker() -> None:
    """Start the sagas, wait until all of them are shipping, then die without cleanup."""
    store = SQLiteSagaStore(DATABASE)
    manager = SagaManager(store, worker_id=WORKER_NAME)
    manager.register(ShipmentSaga)
    for order_id in ORDERS:
        await manager.start("shipment", {"order_id": order_id}, saga_id=f"shipment-{order_id}")
    await all_shipping.wait()
    os.kill(os.getpid(), signal.SIGKILL)


async def restarted_worker() -> list[SagaRecord]:
    """Recover what the dead worker left behind and wait for every saga to finish."""
    store = SQLiteSagaStore(DATABASE)
    try:
        async with SagaManager(store, worker_id=WORKER_NAME) as manager:
            manager.register(ShipmentSaga)
            before = await manager.list(saga_name="shipment")
            for record in sorted(before, key=lambda r: r.saga_id):
                steps = ", ".join(f"{name}={step.status}" for name, step in record.steps.items())
                done = steps or "no step done"
                print(f"after the crash: {record.saga_id} is {record.status} ({done})")
            resumed = await manager.recover()
            print(f"recover() resumed {resumed} saga(s)")
            return [await manager.wait(f"shipment-{order_id}", timeout=30) for order_id in ORDERS]
    finally:
        await store.close()


def main() -> None:
    """Run the doomed worker as a child process, then recover in this one."""
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    for path in (DATABASE, CALL_LOG):
        path.unlink(missing_ok=True)
    child = subprocess.run(
        [sys.executable, __file__],
        env={**os.environ, "RECOVERY_DEMO_PHASE": "doomed"},
        check=False,
        timeout=60,
    )
    print(f"worker process ended with {signal.Signals(-child.returncode).name}")
    records = asyncio.run(restarted_worker())
    for record in records:
        print(f"{record.saga_id}: {record.status}")
    print("service calls, in order:")
    print(CALL_LOG.read_text(encoding="utf-8"), end="")
    shipped = CALL_LOG.read_text(encoding="utf-8").count("] ship ")
    packed = CALL_LOG.read_text(encoding="utf-8").count("] pack ")
    print(f"pack ran {packed} times, ship {shipped} times for {len(ORDERS)} orders")


if __name__ == "__main__":
    if os.environ.get("RECOVERY_DEMO_PHASE") == "doomed":
        asyncio.run(doomed_worker())
    else:
        main()
