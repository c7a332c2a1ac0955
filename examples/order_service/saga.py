"""The order saga: reserve stock, charge the card, book the shipment.

::

    reserve_stock ──> charge_payment ──> create_shipment
         │                  │                   │
    release_stock     refund_payment     cancel_shipment     (compensations, run in reverse)

The saga's data is the order as the API received it: ``customer``, ``items`` (a list of
``{"sku", "qty"}``), ``amount`` and an optional ``slow`` flag; the order id is the saga id.

Every step calls a remote service that may apply a request and lose its reply, so every
step is marked ``compensate_failed=True``: when a step fails (its retries ran out, it was
cancelled, it timed out), its own compensation runs too, and undoes by order id whatever
the lost request may have left behind. The services are idempotent by key and by order, so
a step that runs again after a worker crash, or a compensation that finds nothing to undo,
is harmless.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lexigram.events.sagas import SagaConfig
from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.context import SagaContext, SagaStepResult

from .services import Call, Declined, OrderServices

__all__ = ["ORDER_SAGA_CONFIG", "OrderSaga"]

ORDER_SAGA_CONFIG = SagaConfig(
    default_timeout_seconds=600.0,  # an order not done in ten minutes is compensated
    max_retries_per_step=5,
    retry_delay_seconds=0.2,
    max_retry_delay=2.0,
)
"""The order saga's own settings, given to ``register(..., config=...)``."""

_UNDO_RETRIES = 10
"""Compensations try harder than steps: giving up leaves the order ``failed``."""


def call_of(ctx: SagaContext) -> Call:
    """The service request of the running step: order id, idempotency key and attempt.

    Raises:
        RuntimeError: called outside a step or compensation (there is no key then).
    """
    key = ctx.idempotency_key
    if key is None:
        raise RuntimeError("call_of() is for a running step or compensation")
    return Call(order_id=ctx.saga_id, key=key, attempt=ctx.attempt)


class OrderSaga(SagaBase):
    """Places an order: its stock, its payment and its shipment, or none of them.

    Args:
        services: The inventory, payment and shipping services.
        slow_seconds: How long the shipping step of an order marked ``"slow": true``
            takes (a carrier that keeps you waiting; long enough to cancel the order).
    """

    name = "order"

    def __init__(self, services: OrderServices, *, slow_seconds: float = 5.0) -> None:
        self._services = services
        self._slow_seconds = slow_seconds

    @saga_step("reserve_stock", compensate_failed=True)
    async def reserve_stock(self, ctx: SagaContext) -> SagaStepResult | dict[str, Any]:
        outcome = await self._services.inventory.reserve(call_of(ctx), ctx["items"])
        if isinstance(outcome, Declined):
            return SagaStepResult.fail(outcome.reason)
        return {"reserved": outcome.lines}

    @saga_step("reserve_stock", compensation=True, max_retries=_UNDO_RETRIES)
    async def release_stock(self, ctx: SagaContext) -> dict[str, Any]:
        released = await self._services.inventory.release(call_of(ctx))
        return {"released": released}

    @saga_step("charge_payment", compensate_failed=True)
    async def charge_payment(self, ctx: SagaContext) -> SagaStepResult | dict[str, Any]:
        outcome = await self._services.payment.charge(call_of(ctx), int(ctx["amount"]))
        if isinstance(outcome, Declined):
            return SagaStepResult.fail(outcome.reason)
        return {"charge_id": outcome.charge_id}

    @saga_step("charge_payment", compensation=True, max_retries=_UNDO_RETRIES)
    async def refund_payment(self, ctx: SagaContext) -> dict[str, Any]:
        # ctx.action_completed is False when the charge failed: a lost reply may still
        # have charged the card, so refund by order id whatever exists.
        refunded = await self._services.payment.refund(call_of(ctx))
        return {"refunded": refunded}

    @saga_step("create_shipment", compensate_failed=True)
    async def create_shipment(self, ctx: SagaContext) -> dict[str, Any]:
        if ctx.get("slow", False):
            await asyncio.sleep(self._slow_seconds)  # cancelled at once by a cancel request
        shipment = await self._services.shipping.create(call_of(ctx))
        return {"shipment_id": shipment.shipment_id}

    @saga_step("create_shipment", compensation=True, max_retries=_UNDO_RETRIES)
    async def cancel_shipment(self, ctx: SagaContext) -> dict[str, Any]:
        cancelled = await self._services.shipping.cancel(call_of(ctx))
        return {"cancelled": cancelled}
