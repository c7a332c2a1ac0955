"""Choreography: start_on starts a saga per published event (SPEC 8)."""

from __future__ import annotations

import pytest

from lexigram.events import InMemoryEventBus
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.errors import (
    SagaError,
    SagaNotFoundError,
)
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    OrderPlaced,
    Script,
    manager_for,
    settle,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


# --------------------------------------------------------------------------- start_on


async def test_start_on_starts_a_saga_per_event() -> None:
    """Each published event starts one saga with the event's fields as data."""
    bus = InMemoryEventBus()
    script = Script()
    manager = manager_for(script, config=FAST, event_bus=bus)
    manager.start_on(OrderPlaced, "scripted")
    first, second = OrderPlaced(order_id="o-1"), OrderPlaced(order_id="o-2")
    await bus.publish(first)
    await bus.publish(second)
    records = [await manager.wait(f"scripted:{e.event_id}", timeout=WAIT) for e in (first, second)]
    assert [record.data["order_id"] for record in records] == ["o-1", "o-2"]
    assert all(record.status is P.COMPLETED for record in records)
    await manager.close()


async def test_start_on_is_idempotent_per_event_id() -> None:
    """Delivering one event twice starts one saga."""
    bus = InMemoryEventBus()
    script = Script()
    manager = manager_for(script, config=FAST, event_bus=bus)
    manager.start_on(OrderPlaced, "scripted")
    event = OrderPlaced(order_id="o-1")
    await bus.publish(event)
    await bus.publish(event)
    await manager.wait(f"scripted:{event.event_id}", timeout=WAIT)
    await settle(manager)
    assert len(await manager.list()) == 1
    assert script.actions() == ["a", "b", "c"]
    await manager.close()


async def test_start_on_with_custom_data_and_id() -> None:
    """``data`` and ``saga_id`` may be functions of the event."""
    bus = InMemoryEventBus()
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    manager.start_on(
        OrderPlaced,
        "scripted",
        data=lambda event: {"order": event.order_id, "source": "bus"},
        saga_id=lambda event: f"order-{event.order_id}",
    )
    await bus.publish(OrderPlaced(order_id="o-9"))
    record = await manager.wait("order-o-9", timeout=WAIT)
    assert record.data["order"] == "o-9"
    assert record.data["source"] == "bus"
    await manager.close()


async def test_start_on_returns_a_function_that_stops_listening() -> None:
    """After calling the returned function, events start nothing."""
    bus = InMemoryEventBus()
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    stop = manager.start_on(OrderPlaced, "scripted")
    assert stop() is True
    await bus.publish(OrderPlaced(order_id="o-1"))
    assert await manager.list() == []
    await manager.close()


def test_start_on_needs_an_event_bus() -> None:
    """Without an event bus ``start_on`` raises ``SagaError``."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaError, match="event_bus"):
        manager.start_on(OrderPlaced, "scripted")


def test_start_on_unknown_name_fails_at_once() -> None:
    """``start_on`` with an unregistered name raises ``SagaNotFoundError``."""
    manager = manager_for(Script(), config=FAST, event_bus=InMemoryEventBus())
    with pytest.raises(SagaNotFoundError):
        manager.start_on(OrderPlaced, "nope")


async def test_close_stops_start_on_listening() -> None:
    """A closed manager no longer reacts to events."""
    bus = InMemoryEventBus()
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    manager.start_on(OrderPlaced, "scripted")
    await manager.close()
    assert (await bus.publish(OrderPlaced(order_id="o-1"))).is_ok()
    assert await manager.list() == []


async def test_start_on_stores_an_event_with_a_time_field_as_iso_text() -> None:
    """An event's ``datetime`` fields become ISO text in the saga's data (JSON only)."""
    from datetime import UTC, datetime

    from lexigram.events import DomainEvent

    class Shipped(DomainEvent):
        order_id: str
        shipped_at: datetime

    bus = InMemoryEventBus()
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    manager.start_on(Shipped, "scripted")
    event = Shipped(order_id="o-9", shipped_at=datetime(2026, 12, 2, 9, 30, tzinfo=UTC))
    result = await bus.publish(event)
    assert result.is_ok()
    record = await manager.wait(f"scripted:{event.event_id}", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.data["order_id"] == "o-9"
    assert record.data["shipped_at"] == "2026-12-02T09:30:00+00:00"
    await manager.close()
