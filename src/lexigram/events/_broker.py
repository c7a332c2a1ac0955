"""What both broker buses (NATS JetStream, Redis Streams) share: :class:`BrokerBus`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

from lexigram.events._consumer import DeliveryPolicy, Dispatcher
from lexigram.events._domain import DomainEvent
from lexigram.events._wire import EventRegistry

__all__ = ["BrokerBus"]

E = TypeVar("E", bound=DomainEvent)


class BrokerBus:
    """What both broker buses share: group, registry, policy, subscriptions, ``async with``.

    A subclass sets ``_group``, ``_registry``, ``_policy`` and ``_dispatcher`` in its
    ``__init__`` and implements ``start``, ``close`` and ``publish``.
    """

    _group: str | None
    _registry: EventRegistry
    _policy: DeliveryPolicy
    _dispatcher: Dispatcher

    @property
    def group(self) -> str | None:
        """The consumer group: the service's name (``None``: this bus only publishes)."""
        return self._group

    @property
    def registry(self) -> EventRegistry:
        """The event classes this bus can rebuild."""
        return self._registry

    @property
    def policy(self) -> DeliveryPolicy:
        """The redelivery, dead-letter and visibility bounds."""
        return self._policy

    async def start(self) -> None:
        """Connect, and start consuming when the bus has a group."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop consuming and disconnect."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def subscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        """Call ``handler`` for every ``event_type`` event (subclasses included).

        Raises:
            ValueError: the bus has no ``group``.
            TypeError: ``event_type`` is not a ``DomainEvent`` subclass.
        """
        if self._group is None:
            raise ValueError("this bus has no group: pass group='<service name>' to subscribe")
        self._dispatcher.subscribe(event_type, handler)

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> bool:
        """Stop calling ``handler``; return whether it was subscribed."""
        return self._dispatcher.unsubscribe(event_type, handler)
