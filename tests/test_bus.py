"""``DomainEvent``, ``EventBusProtocol`` and ``InMemoryEventBus`` (SPEC section 8)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from lexigram.events import DomainEvent, Err, EventBusProtocol, InMemoryEventBus, Ok
from lexigram.events.sagas._logging import LOG_FIELDS
from lexigram.events.sagas.events import SagaStepFailed


class OrderPlaced(DomainEvent):
    order_id: str


class PriorityOrderPlaced(OrderPlaced):
    priority: int = 1


class PaymentFailed(DomainEvent):
    order_id: str
    reason: str = "declined"


def test_event_is_built_with_keyword_arguments() -> None:
    """A subclass declares fields as annotations and takes them as keywords."""
    event = OrderPlaced(order_id="o-1")
    assert event.order_id == "o-1"


def test_event_rejects_positional_arguments() -> None:
    """Fields are keyword-only."""
    with pytest.raises(TypeError):
        OrderPlaced("o-1")  # type: ignore[call-arg]


def test_event_is_frozen() -> None:
    """Events cannot be changed after creation."""
    event = OrderPlaced(order_id="o-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.order_id = "o-2"  # type: ignore[misc]


def test_event_id_is_a_fresh_uuid_string() -> None:
    """Each event gets a new UUID string as ``event_id``."""
    first, second = OrderPlaced(order_id="o"), OrderPlaced(order_id="o")
    assert isinstance(first.event_id, str)
    assert str(uuid.UUID(first.event_id)) == first.event_id
    assert first.event_id != second.event_id


def test_event_id_can_be_given() -> None:
    """``event_id`` may be passed explicitly."""
    assert OrderPlaced(order_id="o", event_id="evt-1").event_id == "evt-1"


def test_occurred_at_is_utc_now() -> None:
    """``occurred_at`` defaults to the current time, tz-aware UTC."""
    before = datetime.now(UTC)
    event = OrderPlaced(order_id="o")
    after = datetime.now(UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert before <= event.occurred_at <= after


def test_event_type_is_the_class_name() -> None:
    """``event_type`` names the event's class."""
    assert OrderPlaced(order_id="o").event_type == "OrderPlaced"
    assert PriorityOrderPlaced(order_id="o").event_type == "PriorityOrderPlaced"


def test_event_to_dict_holds_own_fields() -> None:
    """``to_dict`` returns the declared fields, without id and time."""
    assert PaymentFailed(order_id="o").to_dict() == {"order_id": "o", "reason": "declined"}


def test_in_memory_bus_satisfies_protocol() -> None:
    """``InMemoryEventBus`` is an ``EventBusProtocol``."""
    assert isinstance(InMemoryEventBus(), EventBusProtocol)


async def test_publish_delivers_to_subscriber() -> None:
    """A subscribed handler receives the published event."""
    bus = InMemoryEventBus()
    seen: list[OrderPlaced] = []

    async def handler(event: OrderPlaced) -> None:
        seen.append(event)

    bus.subscribe(OrderPlaced, handler)
    event = OrderPlaced(order_id="o-1")
    assert await bus.publish(event) == Ok(None)
    assert seen == [event]


async def test_publish_reaches_base_class_subscribers() -> None:
    """Handlers of a base class receive events of its subclasses."""
    bus = InMemoryEventBus()
    seen: list[str] = []

    async def on_order(event: OrderPlaced) -> None:
        seen.append("order")

    async def on_any(event: DomainEvent) -> None:
        seen.append("any")

    bus.subscribe(OrderPlaced, on_order)
    bus.subscribe(DomainEvent, on_any)
    await bus.publish(PriorityOrderPlaced(order_id="o-1"))
    assert sorted(seen) == ["any", "order"]


async def test_publish_skips_unrelated_subscribers() -> None:
    """A handler of another event type is not called."""
    bus = InMemoryEventBus()
    seen: list[DomainEvent] = []

    async def handler(event: PaymentFailed) -> None:
        seen.append(event)

    bus.subscribe(PaymentFailed, handler)
    await bus.publish(OrderPlaced(order_id="o-1"))
    assert seen == []


async def test_handler_exception_is_returned_as_err_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing handler yields ``Err(exc)``, is logged, and is not raised."""
    bus = InMemoryEventBus()
    boom = RuntimeError("handler broke")

    async def handler(event: OrderPlaced) -> None:
        raise boom

    bus.subscribe(OrderPlaced, handler)
    with caplog.at_level(logging.ERROR):
        result = await bus.publish(OrderPlaced(order_id="o-1"))
    assert result == Err(boom)
    assert any(record.exc_info and record.exc_info[1] is boom for record in caplog.records)


@pytest.mark.parametrize(
    ("event", "fields"),
    [
        (
            SagaStepFailed(
                saga_id="s-1",
                saga_name="orders",
                correlation_id="c-1",
                step_name="charge",
                attempt=2,
            ),
            {"saga_id": "s-1", "saga_name": "orders", "step": "charge", "attempt": 2},
        ),
        (
            OrderPlaced(order_id="o-1"),
            {"saga_id": None, "saga_name": None, "step": None, "attempt": None},
        ),
    ],
    ids=["saga_event", "other_event"],
)
async def test_handler_failure_is_logged_with_the_structured_fields(
    caplog: pytest.LogCaptureFixture, event: DomainEvent, fields: dict[str, object]
) -> None:
    """The failure record carries the five log fields, taken from a saga event when it is one."""
    bus = InMemoryEventBus()

    async def handler(event: DomainEvent) -> None:
        raise RuntimeError("handler broke")

    bus.subscribe(DomainEvent, handler)
    with caplog.at_level(logging.ERROR, logger="lexigram.events"):
        await bus.publish(event)
    [record] = caplog.records
    logged = {name: vars(record)[name] for name in LOG_FIELDS}
    assert logged == {**fields, "worker_id": None}


async def test_other_handlers_run_after_a_failing_one() -> None:
    """One handler's failure does not stop delivery to the others."""
    bus = InMemoryEventBus()
    seen: list[str] = []

    async def failing(event: OrderPlaced) -> None:
        raise RuntimeError("no")

    async def working(event: OrderPlaced) -> None:
        seen.append(event.order_id)

    bus.subscribe(OrderPlaced, failing)
    bus.subscribe(OrderPlaced, working)
    result = await bus.publish(OrderPlaced(order_id="o-1"))
    assert result.is_err()
    assert seen == ["o-1"]


async def test_unsubscribe_stops_delivery() -> None:
    """An unsubscribed handler is no longer called; unsubscribe returns True."""
    bus = InMemoryEventBus()
    seen: list[DomainEvent] = []

    async def handler(event: OrderPlaced) -> None:
        seen.append(event)

    bus.subscribe(OrderPlaced, handler)
    assert bus.unsubscribe(OrderPlaced, handler) is True
    await bus.publish(OrderPlaced(order_id="o-1"))
    assert seen == []


def test_unsubscribe_unknown_handler_returns_false() -> None:
    """Unsubscribing a handler that was never subscribed returns False."""

    async def handler(event: OrderPlaced) -> None:
        return None

    assert InMemoryEventBus().unsubscribe(OrderPlaced, handler) is False


def test_subscribe_rejects_non_event_type() -> None:
    """Subscribing to something that is not a DomainEvent subclass is a TypeError."""

    async def handler(event: object) -> None:
        return None

    with pytest.raises(TypeError, match="DomainEvent"):
        InMemoryEventBus().subscribe(str, handler)  # type: ignore[type-var]


async def test_recording_bus_keeps_published_events() -> None:
    """``record=True`` keeps every published event, in order."""
    bus = InMemoryEventBus(record=True)
    first, second = OrderPlaced(order_id="1"), PaymentFailed(order_id="1")
    await bus.publish(first)
    await bus.publish(second)
    assert bus.published == [first, second]


async def test_non_recording_bus_keeps_nothing() -> None:
    """By default the bus keeps no history."""
    bus = InMemoryEventBus()
    await bus.publish(OrderPlaced(order_id="1"))
    assert bus.published == []
