"""Bus subscriptions a manager holds (``start_on``), and dropping them all on ``close()``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from lexigram.events._bus import EventBusProtocol
from lexigram.events._domain import DomainEvent

__all__ = ["Subscriptions", "event_fields", "starter"]


@dataclass(slots=True)
class _Subscription:
    event_type: type[DomainEvent]
    handler: Callable[[Any], Awaitable[None]]


class Subscriptions:
    """The handlers one manager subscribed on one bus."""

    def __init__(self, bus: EventBusProtocol) -> None:
        self._bus = bus
        self._held: list[_Subscription] = []

    def add(
        self, event_type: type[DomainEvent], handler: Callable[[Any], Awaitable[None]]
    ) -> Callable[[], bool]:
        """Subscribe ``handler``; return a function that unsubscribes it (and says if it was)."""
        self._bus.subscribe(event_type, handler)
        subscription = _Subscription(event_type, handler)
        self._held.append(subscription)

        def stop_listening() -> bool:
            if subscription in self._held:
                self._held.remove(subscription)
            return self._bus.unsubscribe(event_type, handler)

        return stop_listening

    def clear(self) -> None:
        """Unsubscribe every handler."""
        for subscription in self._held:
            self._bus.unsubscribe(subscription.event_type, subscription.handler)
        self._held.clear()


Start = Callable[[str, Mapping[str, Any], str], Awaitable[str]]


def starter(
    start: Start,
    saga_name: str,
    *,
    data: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None,
    saga_id: Callable[[Any], str] | None,
) -> Callable[[DomainEvent], Awaitable[None]]:
    """The handler ``start_on`` subscribes: one saga per event (per event id by default)."""

    async def handler(event: DomainEvent) -> None:
        if callable(data):
            payload: Mapping[str, Any] = data(event)
        elif data is not None:
            payload = data
        else:
            payload = event_fields(event)
        chosen = saga_id(event) if saga_id is not None else f"{saga_name}:{event.event_id}"
        await start(saga_name, payload, chosen)

    return handler


def event_fields(event: DomainEvent) -> dict[str, Any]:
    """An event's own fields as a JSON object: times (and dates) as ISO 8601 text."""
    fields: dict[str, Any] = {}
    for key, value in event.to_dict().items():
        fields[key] = value.isoformat() if isinstance(value, datetime | date) else value
    return fields
