"""The order service's HTTP API (FastAPI): it enqueues orders and reads them, nothing more.

Run it with uvicorn (see ``settings.py`` for the variables)::

    export ORDER_SERVICE_DSN=postgresql://postgres@127.0.0.1:5432/postgres
    uvicorn examples.order_service.app:app

=================================== =========================================================
``POST /orders``                    enqueue an order saga; ``202 {"order_id"}``. An
                                    ``Idempotency-Key`` header becomes the order id, so a
                                    repeated request places one order.
``GET /orders/{order_id}``          the order's status, current step, steps and failure
``POST /orders/{order_id}/cancel``  ask for the order to be cancelled; ``202`` once the request
                                    is stored (a worker compensates the order), ``409`` when
                                    the order is already finished
``GET /health``                     ``200`` once the API is connected
=================================== =========================================================

When PostgreSQL cannot be reached, requests get ``503`` with ``Retry-After``.

The API never runs a saga: its manager registers the order saga only so that it can
enqueue it, and never serves. Workers (``worker.py``) do the work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import Body, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lexigram.events.sagas import (
    SagaDataError,
    SagaManager,
    SagaNotFoundError,
    SagaRecord,
    SagaStatus,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.postgres import PostgresSagaStore

from .saga import ORDER_SAGA_CONFIG, OrderSaga
from .settings import Settings

__all__ = ["app", "create_app"]


class OrderLine(BaseModel):
    """One line of an order."""

    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(ge=1, le=100)


class OrderIn(BaseModel):
    """An order as a client places it (``amount`` in whole currency units)."""

    customer: str = Field(min_length=1, max_length=200)
    items: list[OrderLine] = Field(min_length=1, max_length=50)
    amount: int = Field(ge=0)
    slow: bool = False  # a demo switch: the shipping step takes a while


class OrderAccepted(BaseModel):
    """The reply to ``POST /orders``."""

    order_id: str


class StepOut(BaseModel):
    """One step of an order's saga."""

    name: str
    status: str
    error: str | None


class FailureOut(BaseModel):
    """Why an order did not complete."""

    kind: str
    step: str | None
    message: str


class OrderOut(BaseModel):
    """The reply to ``GET /orders/{order_id}``.

    ``steps`` lists the steps that finished (completed, failed, compensated): the library
    writes a step when it ends, never when it starts. ``current_step`` is the step running
    (or about to run) while the order moves forward.
    """

    order_id: str
    status: str
    current_step: str | None
    steps: list[StepOut]
    failure: FailureOut | None
    cancel_requested_at: datetime | None


class CancelIn(BaseModel):
    """The optional body of ``POST /orders/{order_id}/cancel``."""

    reason: str = Field(default="cancelled by the customer", max_length=500)


class CancelAccepted(BaseModel):
    """The reply to ``POST /orders/{order_id}/cancel``."""

    order_id: str
    status: str
    cancel_requested_at: datetime | None


def order_out(record: SagaRecord) -> OrderOut:
    """What the API shows of an order's saga record."""
    failure = record.failure
    return OrderOut(
        order_id=record.saga_id,
        status=record.status.value,
        current_step=record.current_step if record.status is SagaStatus.RUNNING else None,
        steps=[
            StepOut(name=step.step_name, status=step.status.value, error=step.error)
            for step in record.steps.values()
        ],
        failure=None
        if failure is None
        else FailureOut(kind=failure.kind, step=failure.step, message=failure.message),
        cancel_requested_at=record.cancel_requested_at,
    )


class _Client:
    """The saga manager the routes use, once the lifespan opened it."""

    manager: SagaManager | None = None

    def get(self) -> SagaManager:
        if self.manager is None:
            raise HTTPException(503, "the service is starting or stopping")
        return self.manager

    async def order(self, order_id: str) -> SagaRecord:
        record = await self.get().get(order_id)
        if record is None or record.saga_name != OrderSaga.name:
            raise HTTPException(404, f"no order {order_id!r}")
        return record


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; it connects when started (``settings`` from the environment if omitted)."""
    client = _Client()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        config = settings or Settings.from_env()
        store = PostgresSagaStore(
            config.dsn, schema=config.schema, table=config.table, max_size=config.pool_size
        )
        async with store, SagaManager(store) as manager:
            # Registered to enqueue it (the name and its validation); never served here.
            manager.register(OrderSaga, config=ORDER_SAGA_CONFIG)
            client.manager = manager
            try:
                yield
            finally:
                client.manager = None

    api = FastAPI(title="Order service", version="1.0", lifespan=lifespan)

    @api.exception_handler(SagaStoreUnavailableError)
    async def store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        """PostgreSQL cannot be reached (or has no free connection): ask to retry soon.

        Retrying ``POST /orders`` with the same ``Idempotency-Key`` is safe.
        """
        return JSONResponse(
            {"detail": "the order store is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @api.post("/orders", status_code=202)
    async def place_order(
        order: OrderIn, idempotency_key: Annotated[str | None, Header()] = None
    ) -> OrderAccepted:
        """Enqueue the order's saga; a worker runs it."""
        try:
            order_id = await client.get().enqueue(
                OrderSaga.name, order.model_dump(), saga_id=idempotency_key
            )
        except SagaDataError as exc:  # an Idempotency-Key that cannot be an id
            raise HTTPException(400, f"bad Idempotency-Key: {exc}") from exc
        return OrderAccepted(order_id=order_id)

    @api.get("/orders/{order_id}")
    async def get_order(order_id: str) -> OrderOut:
        """The order's status, steps and failure."""
        return order_out(await client.order(order_id))

    @api.post("/orders/{order_id}/cancel", status_code=202)
    async def cancel_order(
        order_id: str, body: Annotated[CancelIn | None, Body()] = None
    ) -> CancelAccepted:
        """Store a cancel request; the worker holding the order compensates it."""
        await client.order(order_id)
        reason = (body or CancelIn()).reason
        try:
            record = await client.get().cancel(order_id, reason=reason)
        except SagaNotFoundError as exc:
            raise HTTPException(404, f"no order {order_id!r}") from exc
        if record.is_terminal:
            raise HTTPException(409, f"order {order_id!r} is already {record.status.value}")
        return CancelAccepted(
            order_id=order_id,
            status=record.status.value,
            cancel_requested_at=record.cancel_requested_at,
        )

    @api.get("/health")
    async def health() -> dict[str, str]:
        """``ok`` once the API is connected to its store."""
        client.get()
        return {"status": "ok"}

    return api


app = create_app()
"""The application uvicorn serves: ``uvicorn examples.order_service.app:app``."""
