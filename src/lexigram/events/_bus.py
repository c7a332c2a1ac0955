"""The event bus port (``EventBusProtocol``) and its in-process implementation."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from lexigram.events._domain import DomainEvent
from lexigram.events._result import Err, Ok, Result

__all__ = ["EventBusProtocol", "EventHandler", "InMemoryEventBus"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=DomainEvent)
EventHandler = Callable[[Any], Awaitable[None]]
"""An async callable taking one event."""


@runtime_checkable
class EventBusProtocol(Protocol):
    """Publishes domain events to subscribed handlers.

    Contract:

    - ``publish`` never raises because a handler failed: it returns ``Ok(None)`` when every
      handler succeeded and ``Err(exception)`` with the first handler error otherwise.
    - Handlers subscribed to a class receive events of that class and of its subclasses
      (subscribe to ``DomainEvent`` to see everything).
    - ``unsubscribe`` returns whether the handler was subscribed.
    """

    async def publish(self, event: DomainEvent) -> Result[None, Exception]:
        """Deliver ``event`` to its subscribers."""
        ...

    def subscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        """Call ``handler`` for every published event that is an ``event_type``."""
        ...

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> bool:
        """Stop calling ``handler`` for ``event_type``; return whether it was subscribed."""
        ...


def _log_fields(event: DomainEvent) -> dict[str, Any]:
    """The structured fields every log record carries (those of ``sagas._logging``).

    Written out here rather than imported: this module sits below the sagas package. A
    saga event names its saga, step and attempt; any other event leaves them ``None``.
    """
    return {
        "saga_id": getattr(event, "saga_id", None),
        "saga_name": getattr(event, "saga_name", None),
        "step": getattr(event, "step_name", None),
        "attempt": getattr(event, "attempt", None),
        "worker_id": None,
    }


class InMemoryEventBus:
    """Delivers events in-process, awaiting each async handler in subscription order.

    A handler's exception is logged and returned as ``Err``; the other handlers still run
    and nothing is raised into the publisher. ``published`` keeps every event when
    ``record=True`` (handy in tests).
    """

    def __init__(self, *, record: bool = False) -> None:
        self._handlers: dict[type[DomainEvent], list[EventHandler]] = {}
        self._record = record
        self.published: list[DomainEvent] = []

    def subscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        """Call ``handler`` for every published event that is an ``event_type``."""
        if not (isinstance(event_type, type) and issubclass(event_type, DomainEvent)):
            raise TypeError(f"event_type must be a DomainEvent subclass, got {event_type!r}")
        if not callable(handler):
            raise TypeError(f"handler must be an async callable, got {handler!r}")
        self._handlers.setdefault(event_type, []).append(handler)

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> bool:
        """Stop calling ``handler`` for ``event_type``; return whether it was subscribed."""
        handlers = self._handlers.get(event_type)
        if not handlers or handler not in handlers:
            return False
        handlers.remove(handler)
        return True

    async def publish(self, event: DomainEvent) -> Result[None, Exception]:
        """Deliver ``event`` to the handlers of its class and of its base classes."""
        if self._record:
            self.published.append(event)
        first_error: Exception | None = None
        for klass in type(event).__mro__:
            for handler in tuple(self._handlers.get(klass, ())):
                try:
                    await handler(event)
                except Exception as exc:  # a handler must never break the publisher
                    logger.exception(
                        "event handler %r failed for %s %s",
                        handler,
                        event.event_type,
                        event.event_id,
                        extra=_log_fields(event),
                    )
                    if first_error is None:
                        first_error = exc
            if klass is DomainEvent:
                break
        return Ok(None) if first_error is None else Err(first_error)
