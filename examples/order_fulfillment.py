"""Order fulfilment: the saga from the documentation, made runnable.

Three small in-process services stand in for real ones. The script runs two orders on an
embedded SQLite store (``demo-data/orders.db``, or ``$LEXIGRAM_EXAMPLE_DIR/orders.db``):

- ``ord-1`` for 500: every step completes;
- ``ord-2`` for 5000: the payment is declined, so the inventory reservation is released
  (the compensation of the one completed step), and the saga ends ``compensated``.

Run it with ``make demo`` or ``python examples/order_fulfillment.py``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.types import SagaRecord

# --------------------------------------------------------------------------- fake services

CALLS: list[str] = []
"""Every service call, in order, so the output shows what the saga did."""


class InventoryService:
    """Reserves stock; releasing a reservation puts it back."""

    def __init__(self, stock: int) -> None:
        self.stock = stock
        self.reserved: dict[str, int] = {}

    async def reserve(self, order_id: str) -> SagaStepResult:
        CALLS.append(f"inventory.reserve({order_id})")
        if self.stock < 1:
            return SagaStepResult.fail("out of stock")
        self.stock -= 1
        self.reserved[order_id] = 1
        return SagaStepResult.Ok({"reservation": f"res-{order_id}"})

    async def release(self, order_id: str) -> SagaStepResult:
        CALLS.append(f"inventory.release({order_id})")
        self.stock += self.reserved.pop(order_id, 0)  # idempotent: a second call is a no-op
        return SagaStepResult.Ok()


class PaymentService:
    """Charges cards up to a limit; a larger amount is declined (a business failure)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.charged: dict[str, int] = {}

    async def charge(self, order_id: str, amount: int) -> SagaStepResult:
        CALLS.append(f"payment.charge({order_id}, {amount})")
        if amount > self.limit:
            return SagaStepResult.fail(f"card declined: {amount} is over the limit")
        self.charged[order_id] = amount
        return SagaStepResult.Ok({"charged": amount})

    async def refund(self, order_id: str) -> SagaStepResult:
        CALLS.append(f"payment.refund({order_id})")
        self.charged.pop(order_id, None)
        return SagaStepResult.Ok()


class OrderService:
    """Confirms orders."""

    def __init__(self) -> None:
        self.confirmed: set[str] = set()

    async def confirm(self, order_id: str) -> SagaStepResult:
        CALLS.append(f"order.confirm({order_id})")
        self.confirmed.add(order_id)
        return SagaStepResult.Ok({"confirmed": True})


inventory = InventoryService(stock=10)
payment = PaymentService(limit=1000)
order = OrderService()

# --------------------------------------------------------------------------- the saga


class OrderFulfillmentSaga(SagaBase):
    name = "order_fulfillment"

    @saga_step("reserve_inventory", max_retries=3)
    async def reserve(self, ctx: SagaContext) -> SagaStepResult:
        return await inventory.reserve(ctx["order_id"])

    @saga_step("reserve_inventory", compensation=True)
    async def release(self, ctx: SagaContext) -> SagaStepResult:
        return await inventory.release(ctx["order_id"])

    @saga_step("charge_payment", max_retries=2)
    async def charge(self, ctx: SagaContext) -> SagaStepResult:
        return await payment.charge(ctx["order_id"], ctx["amount"])

    @saga_step("charge_payment", compensation=True)
    async def refund(self, ctx: SagaContext) -> SagaStepResult:
        return await payment.refund(ctx["order_id"])

    @saga_step("confirm_order")
    async def confirm(self, ctx: SagaContext) -> SagaStepResult:
        return await order.confirm(ctx["order_id"])


# --------------------------------------------------------------------------- running it


def describe(record: SagaRecord) -> str:
    """Render a saga's outcome and each step's status."""
    lines = [f"saga {record.saga_id[:8]} ({record.data['order_id']}): {record.status}"]
    if record.failure is not None:  # why it did not complete, as data
        lines.append(f"  why: {record.failure.kind} at {record.failure.step}: {record.error}")
    lines.extend(f"  {name:<18} {step.status}" for name, step in record.steps.items())
    return "\n".join(lines)


async def main(directory: Path) -> list[SagaRecord]:
    """Run the two orders and return their final records."""
    store = SQLiteSagaStore(directory / "orders.db")
    try:
        async with SagaManager(store) as manager:
            manager.register(OrderFulfillmentSaga)
            resumed = await manager.recover()  # finish anything an earlier run left behind
            if resumed:
                print(f"recovered {resumed} interrupted saga(s) from an earlier run")
            records = []
            for order_id, amount in (("ord-1", 500), ("ord-2", 5000)):
                CALLS.clear()
                record = await manager.execute(
                    "order_fulfillment",
                    {"order_id": order_id, "amount": amount},
                    saga_id=str(uuid.uuid4()),
                )
                print(describe(record))
                print("  calls: " + ", ".join(CALLS))
                records.append(record)
            stored = await manager.list(saga_name="order_fulfillment", limit=1000)
            print(f"{len(stored)} order saga(s) in {directory / 'orders.db'}")
            return records
    finally:
        await store.close()


if __name__ == "__main__":
    data_dir = Path(os.environ.get("LEXIGRAM_EXAMPLE_DIR", "demo-data"))
    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(data_dir))
