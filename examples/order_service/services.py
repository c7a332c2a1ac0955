"""Fake inventory, payment and shipping services with their state in PostgreSQL.

They behave like the remote services a real order saga calls, warts included:

- **Idempotent by key and by order.** Every effect is stored under the order id (one
  reservation, one charge, one shipment per order) together with the caller's idempotency
  key; a repeated request returns what the first one did instead of doing it twice.
- **Undo by order id.** ``release``, ``refund`` and ``cancel`` undo whatever exists for the
  order, and do nothing when nothing (or nothing active) exists. So a compensation that
  runs after a lost reply, or after an action that never happened, is always right.
- **Business refusals.** An unknown SKU or missing stock, and a charge over
  :data:`CARD_LIMIT`, are answered with :class:`Declined`: the saga fails the step and
  compensates, it does not retry.
- **Transient faults.** :class:`Faults` makes a share of the calls raise
  :class:`ServiceUnavailableError` (a ``ConnectionError``, retried by the saga engine):
  either *before* the request reaches the service (nothing happened) or *after* it was
  applied (the effect exists but the reply was lost). Which calls fail is decided by a
  hash of the idempotency key and the attempt, so a run can be replayed.

Every applied effect also appends a row to ``service_effects`` in the same transaction: an
audit journal that shows an effect applied twice, should that ever happen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CARD_LIMIT",
    "DEFAULT_CATALOGUE",
    "Call",
    "Charge",
    "Declined",
    "Faults",
    "InventoryService",
    "OrderServices",
    "PaymentService",
    "Reservation",
    "ServiceUnavailableError",
    "Shipment",
    "ShippingService",
    "install",
]

CARD_LIMIT = 1000
"""Charges above this amount are declined (a business failure, not retried)."""

DEFAULT_CATALOGUE: Mapping[str, int] = {
    **{f"sku-{n:02d}": 500 for n in range(1, 9)},
    "sku-rare-1": 12,  # scarce: some orders will find it sold out
    "sku-rare-2": 8,
}
"""SKUs and their initial stock, seeded by :func:`install` when the stock table is new."""

_INSTALL_LOCK = 0x0_5E_57_0C  # advisory lock key: workers starting together install once


@dataclass(frozen=True, slots=True)
class Call:
    """What a saga step tells a service about one request.

    Attributes:
        order_id: The order (the saga id).
        key: The request's idempotency key (``ctx.idempotency_key``).
        attempt: Which attempt this is (``ctx.attempt``); only the fake network looks at
            it, to decide which calls fail.
    """

    order_id: str
    key: str
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Declined:
    """A service refused the request for a business reason (not worth retrying)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """Stock held for an order: quantities by SKU."""

    order_id: str
    lines: dict[str, int]


@dataclass(frozen=True, slots=True)
class Charge:
    """A card charge."""

    order_id: str
    charge_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Shipment:
    """A shipment booked with the carrier."""

    order_id: str
    shipment_id: str


class ServiceUnavailableError(ConnectionError):
    """A transient fault: the request or its reply was lost. Retrying is safe."""


class Faults:
    """Decides which service calls fail transiently, by a hash of key and attempt.

    Args:
        rate: Share of calls failing at each of the two points (0 disables faults).
    """

    def __init__(self, rate: float) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be between 0 and 1, got {rate}")
        self.rate = rate

    def strikes(self, call: Call, where: Literal["request", "reply"]) -> bool:
        """Whether ``call`` fails at ``where`` (the same answer every time it is asked)."""
        if self.rate == 0:
            return False
        text = f"{call.key}|{call.attempt}|{where}".encode()
        draw = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
        return draw / 2**64 < self.rate

    def check(self, service: str, call: Call, where: Literal["request", "reply"]) -> None:
        """Raise :class:`ServiceUnavailableError` if ``call`` fails at ``where``."""
        if self.strikes(call, where):
            lost = "request" if where == "request" else "reply (the request was applied)"
            raise ServiceUnavailableError(f"{service}: connection lost, {lost}")


class _Service:
    """What the three services share: a connection pool, a schema and the fault injector."""

    name = "service"

    def __init__(self, pool: Any, schema: str, faults: Faults) -> None:
        self._pool = pool
        self._schema = schema
        self._faults = faults

    def _sql(self, text: str) -> str:
        """``text`` with ``{s}`` replaced by the quoted schema (validated by ``Settings``)."""
        return text.replace("{s}", f'"{self._schema}"')

    async def _journal(self, conn: Any, operation: str, call: Call) -> None:
        await conn.execute(
            self._sql(
                "INSERT INTO {s}.service_effects (service, operation, order_id, idempotency_key)"
                " VALUES ($1, $2, $3, $4)"
            ),
            self.name,
            operation,
            call.order_id,
            call.key,
        )


class _OutOfStockError(Exception):
    """Rolls a reservation back (internal to :meth:`InventoryService.reserve`)."""

    def __init__(self, sku: str) -> None:
        super().__init__(sku)
        self.sku = sku


class InventoryService(_Service):
    """Holds stock for orders (``inventory_stock``, ``inventory_reservations``)."""

    name = "inventory"

    async def reserve(
        self, call: Call, items: Iterable[Mapping[str, Any]]
    ) -> Reservation | Declined:
        """Reserve every item of the order at once, or nothing.

        Items naming one SKU twice are added up. A repeated request for an order that
        already has a reservation returns it.

        Raises:
            ServiceUnavailableError: the request was lost (nothing reserved), or the reply
                was (the stock *was* reserved).
        """
        self._faults.check(self.name, call, "request")
        wanted: dict[str, int] = {}
        for item in items:
            wanted[str(item["sku"])] = wanted.get(str(item["sku"]), 0) + int(item["qty"])
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                fresh = await conn.fetchval(
                    self._sql(
                        "INSERT INTO {s}.inventory_reservations (order_id, idempotency_key)"
                        " VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING order_id"
                    ),
                    call.order_id,
                    call.key,
                )
                if fresh is None:  # a repeated request: answer as the first time
                    reservation = await self._reservation(conn, call.order_id)
                else:
                    reservation = await self._take(conn, call, wanted)
        except _OutOfStockError as exc:
            return Declined(f"out of stock: {exc.sku}")
        self._faults.check(self.name, call, "reply")
        return reservation

    async def _take(self, conn: Any, call: Call, wanted: Mapping[str, int]) -> Reservation:
        """Take the stock of a new reservation (in the caller's transaction)."""
        # Rows are locked in SKU order, so concurrent reservations never deadlock.
        for sku in sorted(wanted):
            taken = await conn.fetchval(
                self._sql(
                    "UPDATE {s}.inventory_stock SET available = available - $2"
                    " WHERE sku = $1 AND available >= $2 RETURNING sku"
                ),
                sku,
                wanted[sku],
            )
            if taken is None:
                raise _OutOfStockError(sku)
        lines = dict(sorted(wanted.items()))
        await conn.executemany(
            self._sql(
                "INSERT INTO {s}.inventory_reservation_lines (order_id, sku, qty)"
                " VALUES ($1, $2, $3)"
            ),
            [(call.order_id, sku, qty) for sku, qty in lines.items()],
        )
        await self._journal(conn, "reserve", call)
        return Reservation(call.order_id, lines)

    async def _reservation(self, conn: Any, order_id: str) -> Reservation:
        rows = await conn.fetch(
            self._sql(
                "SELECT sku, qty FROM {s}.inventory_reservation_lines"
                " WHERE order_id = $1 ORDER BY sku"
            ),
            order_id,
        )
        return Reservation(order_id, {row["sku"]: row["qty"] for row in rows})

    async def release(self, call: Call) -> bool:
        """Put back the order's reserved stock; return whether anything was released.

        Raises:
            ServiceUnavailableError: the request or its reply was lost.
        """
        self._faults.check(self.name, call, "request")
        async with self._pool.acquire() as conn, conn.transaction():
            released = await conn.fetchval(
                self._sql(
                    "UPDATE {s}.inventory_reservations"
                    " SET status = 'released', released_at = now()"
                    " WHERE order_id = $1 AND status = 'active' RETURNING order_id"
                ),
                call.order_id,
            )
            if released is not None:
                reservation = await self._reservation(conn, call.order_id)
                for sku, qty in reservation.lines.items():  # SKU order, as in reserve()
                    await conn.execute(
                        self._sql(
                            "UPDATE {s}.inventory_stock SET available = available + $2"
                            " WHERE sku = $1"
                        ),
                        sku,
                        qty,
                    )
                await self._journal(conn, "release", call)
        self._faults.check(self.name, call, "reply")
        return released is not None


class PaymentService(_Service):
    """Charges and refunds cards (``payments``); declines charges over :data:`CARD_LIMIT`."""

    name = "payment"

    async def charge(self, call: Call, amount: int) -> Charge | Declined:
        """Charge ``amount`` for the order, at most once per order.

        Raises:
            ServiceUnavailableError: the request was lost (nothing charged), or the reply
                was (the card *was* charged).
        """
        self._faults.check(self.name, call, "request")
        if amount > CARD_LIMIT:
            return Declined(f"card declined: {amount} is over the limit of {CARD_LIMIT}")
        async with self._pool.acquire() as conn, conn.transaction():
            charge_id = await conn.fetchval(
                self._sql(
                    "INSERT INTO {s}.payments (order_id, charge_id, idempotency_key, amount)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING charge_id"
                ),
                call.order_id,
                f"ch-{_digest(call.key)}",
                call.key,
                amount,
            )
            if charge_id is not None:
                await self._journal(conn, "charge", call)
            else:  # a repeated request: the charge made the first time
                charge_id = await conn.fetchval(
                    self._sql("SELECT charge_id FROM {s}.payments WHERE order_id = $1"),
                    call.order_id,
                )
        self._faults.check(self.name, call, "reply")
        return Charge(call.order_id, str(charge_id), amount)

    async def refund(self, call: Call) -> bool:
        """Refund the order's charge if there is one; return whether anything was refunded.

        Raises:
            ServiceUnavailableError: the request or its reply was lost.
        """
        self._faults.check(self.name, call, "request")
        async with self._pool.acquire() as conn, conn.transaction():
            refunded = await conn.fetchval(
                self._sql(
                    "UPDATE {s}.payments SET status = 'refunded', refunded_at = now()"
                    " WHERE order_id = $1 AND status = 'charged' RETURNING order_id"
                ),
                call.order_id,
            )
            if refunded is not None:
                await self._journal(conn, "refund", call)
        self._faults.check(self.name, call, "reply")
        return refunded is not None


class ShippingService(_Service):
    """Books and cancels shipments with a carrier (``shipments``)."""

    name = "shipping"

    async def create(self, call: Call) -> Shipment:
        """Book the order's shipment, at most once per order.

        Raises:
            ServiceUnavailableError: the request was lost (nothing booked), or the reply
                was (the shipment *was* booked).
        """
        self._faults.check(self.name, call, "request")
        async with self._pool.acquire() as conn, conn.transaction():
            shipment_id = await conn.fetchval(
                self._sql(
                    "INSERT INTO {s}.shipments (order_id, shipment_id, idempotency_key)"
                    " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING shipment_id"
                ),
                call.order_id,
                f"shp-{_digest(call.key)}",
                call.key,
            )
            if shipment_id is not None:
                await self._journal(conn, "ship", call)
            else:
                shipment_id = await conn.fetchval(
                    self._sql("SELECT shipment_id FROM {s}.shipments WHERE order_id = $1"),
                    call.order_id,
                )
        self._faults.check(self.name, call, "reply")
        return Shipment(call.order_id, str(shipment_id))

    async def cancel(self, call: Call) -> bool:
        """Cancel the order's shipment if there is one; return whether anything was cancelled.

        Raises:
            ServiceUnavailableError: the request or its reply was lost.
        """
        self._faults.check(self.name, call, "request")
        async with self._pool.acquire() as conn, conn.transaction():
            cancelled = await conn.fetchval(
                self._sql(
                    "UPDATE {s}.shipments SET status = 'cancelled', cancelled_at = now()"
                    " WHERE order_id = $1 AND status = 'created' RETURNING order_id"
                ),
                call.order_id,
            )
            if cancelled is not None:
                await self._journal(conn, "cancel_shipment", call)
        self._faults.check(self.name, call, "reply")
        return cancelled is not None


@dataclass(frozen=True, slots=True)
class OrderServices:
    """The three services an order saga talks to."""

    inventory: InventoryService
    payment: PaymentService
    shipping: ShippingService

    @classmethod
    def connect(cls, pool: Any, schema: str, *, fault_rate: float = 0.0) -> OrderServices:
        """The services on an asyncpg pool, with their tables in ``schema``."""
        faults = Faults(fault_rate)
        return cls(
            InventoryService(pool, schema, faults),
            PaymentService(pool, schema, faults),
            ShippingService(pool, schema, faults),
        )


def _digest(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


_TABLES = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.inventory_stock (
    sku text PRIMARY KEY,
    available integer NOT NULL CHECK (available >= 0)
);
CREATE TABLE IF NOT EXISTS {s}.inventory_reservations (
    order_id text PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'released')),
    created_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);
CREATE TABLE IF NOT EXISTS {s}.inventory_reservation_lines (
    order_id text NOT NULL REFERENCES {s}.inventory_reservations,
    sku text NOT NULL REFERENCES {s}.inventory_stock,
    qty integer NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, sku)
);
CREATE TABLE IF NOT EXISTS {s}.payments (
    order_id text PRIMARY KEY,
    charge_id text NOT NULL UNIQUE,
    idempotency_key text NOT NULL UNIQUE,
    amount integer NOT NULL,
    status text NOT NULL DEFAULT 'charged' CHECK (status IN ('charged', 'refunded')),
    charged_at timestamptz NOT NULL DEFAULT now(),
    refunded_at timestamptz
);
CREATE TABLE IF NOT EXISTS {s}.shipments (
    order_id text PRIMARY KEY,
    shipment_id text NOT NULL UNIQUE,
    idempotency_key text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'created' CHECK (status IN ('created', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz
);
CREATE TABLE IF NOT EXISTS {s}.service_effects (
    id bigserial PRIMARY KEY,
    service text NOT NULL,
    operation text NOT NULL,
    order_id text NOT NULL,
    idempotency_key text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


async def install(pool: Any, schema: str, catalogue: Mapping[str, int] = DEFAULT_CATALOGUE) -> None:
    """Create the services' tables if missing and stock the SKUs not stocked yet.

    Safe to run from every worker at once (an advisory lock serialises it) and on every
    start (existing tables and stock are left as they are).
    """
    quoted = f'"{schema}"'
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _INSTALL_LOCK)
        await conn.execute(_TABLES.replace("{s}", quoted))
        await conn.executemany(
            f"INSERT INTO {quoted}.inventory_stock (sku, available) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            sorted(catalogue.items()),
        )
