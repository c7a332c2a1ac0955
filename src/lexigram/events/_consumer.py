"""What both broker buses share on the consuming side: one policy, one loop.

- :class:`DeliveryPolicy` — how often a message is delivered before it is dead-lettered,
  how long to wait before a redelivery, how long an unacknowledged message stays with a
  consumer (the *visibility timeout*).
- :func:`judge` — the pure rule turning "delivery ``n`` of a message ended like this" into a
  :class:`Verdict`: acknowledge, redeliver after a delay, or dead-letter.
- :class:`Dispatcher` — the subscriptions of one bus, and the delivery of one message
  body to every handler of its class and base classes (as ``InMemoryEventBus`` does).
- :class:`ConsumerLoop` — fetches from a broker-specific :class:`Source`, dispatches, and
  settles each message; rides out broker outages with a backoff.

A broker module only says how to fetch, acknowledge, redeliver, dead-letter and release
messages on its broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from lexigram.events._bus import EventHandler, _log_fields
from lexigram.events._domain import DomainEvent
from lexigram.events._wire import (
    Envelope,
    EventCodecError,
    EventRegistry,
)

__all__ = [
    "Action",
    "ConsumerLoop",
    "Delivery",
    "DeliveryPolicy",
    "Dispatcher",
    "Source",
    "Verdict",
    "judge",
    "overdue",
]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=DomainEvent)

# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True, slots=True)
class _Backoff:
    """``min(base * 2 ** (n - 1), cap)`` seconds after the ``n``-th failure."""

    base: float
    cap: float

    def delay(self, failures: int) -> float:
        if failures < 1 or self.base <= 0:
            return 0.0
        return min(self.base * 2.0 ** min(failures - 1, 62), self.cap)


_RECONNECT = _Backoff(0.05, 2.0)
"""Pauses of a consumer loop while its broker cannot be reached: 50 ms doubling to 2 s."""


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How a broker bus redelivers a message its handlers failed, and when it gives up.

    Attributes:
        max_deliveries: Deliveries of one message before it is dead-lettered (the last
            failure dead-letters it; a message delivered more often without ever being
            acknowledged, say because its handler crashes the process, is dead-lettered
            on arrival).
        redelivery_delay: Seconds before the redelivery after the first failure; doubled
            after each further failure.
        max_redelivery_delay: The cap of that delay.
        visibility_timeout: Seconds a delivered, unacknowledged message stays with its
            consumer before the broker gives it to another one (JetStream ``ack_wait``;
            the idle time before ``XAUTOCLAIM`` on Redis). A running handler keeps its
            message by renewing this every third of it. On Redis a redelivery never
            waits longer than this.
    """

    max_deliveries: int = 5
    redelivery_delay: float = 1.0
    max_redelivery_delay: float = 60.0
    visibility_timeout: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.max_deliveries, bool) or not isinstance(self.max_deliveries, int):
            raise TypeError("max_deliveries must be an int")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, got {self.max_deliveries}")
        for name in ("redelivery_delay", "max_redelivery_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.visibility_timeout < 0.1:
            raise ValueError(
                f"visibility_timeout must be at least 0.1 s, got {self.visibility_timeout}"
            )

    def delay(self, deliveries: int) -> float:
        """Seconds before redelivering a message that failed delivery ``deliveries``."""
        return _Backoff(self.redelivery_delay, self.max_redelivery_delay).delay(deliveries)


class Action(enum.StrEnum):
    """What a consumer does with a message once its delivery ended."""

    ACK = "ack"
    """Done (or not for this consumer): acknowledge it."""
    RETRY = "retry"
    """A handler failed: have the broker redeliver it after ``Verdict.delay``."""
    DEAD = "dead"
    """Give up: publish it to the dead-letter stream with the reason, then acknowledge it."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one delivery.

    Attributes:
        action: Acknowledge, redeliver or dead-letter.
        deliveries: Which delivery of the message this was (from 1).
        delay: Seconds before the redelivery (``Action.RETRY``).
        reason: Why it failed (empty for ``Action.ACK``).
    """

    action: Action
    deliveries: int
    delay: float = 0.0
    reason: str = ""


def judge(
    deliveries: int, error: str | None, policy: DeliveryPolicy, *, poison: bool = False
) -> Verdict:
    """Decide what follows delivery ``deliveries`` of a message.

    Args:
        deliveries: Which delivery this was (from 1).
        error: Why it failed, or ``None`` when every handler succeeded.
        policy: The bounds.
        poison: The message can never succeed (it cannot be decoded): no retry.
    """
    if error is None:
        return Verdict(Action.ACK, deliveries)
    if poison:
        return Verdict(Action.DEAD, deliveries, reason=error)
    if deliveries >= policy.max_deliveries:
        return Verdict(
            Action.DEAD,
            deliveries,
            reason=f"failed {deliveries} deliveries (max_deliveries={policy.max_deliveries}): "
            f"{error}",
        )
    return Verdict(Action.RETRY, deliveries, delay=policy.delay(deliveries), reason=error)


def overdue(deliveries: int, policy: DeliveryPolicy) -> Verdict | None:
    """Dead-letter a message delivered past the bound without an acknowledgement."""
    if deliveries <= policy.max_deliveries:
        return None
    return Verdict(
        Action.DEAD,
        deliveries,
        reason=f"delivered {deliveries} times without being acknowledged "
        f"(max_deliveries={policy.max_deliveries})",
    )


# --------------------------------------------------------------------------- dispatching


@dataclass(slots=True)
class Delivery:
    """One message as a broker handed it over.

    Attributes:
        body: The raw body (``encode_event``'s JSON).
        deliveries: Which delivery of it this is (from 1), as the broker counts.
        bases: The class names from ``BASES_HEADER``, when the producer sent them.
        handle: The broker's own message (a NATS ``Msg``, a Redis entry id).
        touch: Renews the message's visibility timeout while a handler runs.
        event_type: Its event type, once read.
        event_id: Its event id, once read.
    """

    body: bytes
    deliveries: int
    bases: tuple[str, ...] | None
    handle: Any
    touch: Callable[[], Awaitable[object]] | None = None
    event_type: str = ""
    event_id: str = ""


class Dispatcher:
    """The handlers of one bus, and the delivery of one message body to them."""

    def __init__(self, registry: EventRegistry, policy: DeliveryPolicy) -> None:
        self.registry = registry
        self.policy = policy
        self._handlers: dict[type[DomainEvent], list[EventHandler]] = {}
        self.active = asyncio.Event()
        """Set while at least one handler is subscribed (the loop fetches only then)."""

    def subscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        """Add ``handler`` for ``event_type`` and its subclasses."""
        if not (isinstance(event_type, type) and issubclass(event_type, DomainEvent)):
            raise TypeError(f"event_type must be a DomainEvent subclass, got {event_type!r}")
        if not callable(handler):
            raise TypeError(f"handler must be an async callable, got {handler!r}")
        self.registry.learn(event_type)
        self._handlers.setdefault(event_type, []).append(handler)
        self.active.set()

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> bool:
        """Remove ``handler``; return whether it was subscribed."""
        handlers = self._handlers.get(event_type)
        if not handlers or handler not in handlers:
            return False
        handlers.remove(handler)
        if not handlers:
            del self._handlers[event_type]
        if not self._handlers:
            self.active.clear()
        return True

    async def deliver(self, delivery: Delivery) -> Verdict:
        """Decode ``delivery``, run every matching handler, and judge the outcome."""
        late = overdue(delivery.deliveries, self.policy)
        try:
            envelope = Envelope.parse(delivery.body)
        except EventCodecError as exc:
            return late or judge(delivery.deliveries, exc.reason, self.policy, poison=True)
        delivery.event_type, delivery.event_id = envelope.event_type, envelope.event_id
        if late is not None:
            return late
        subscribed = tuple(self._handlers)
        names = delivery.bases or (envelope.event_type,)
        wanted = {klass.__name__ for klass in subscribed}
        if DomainEvent not in subscribed and wanted.isdisjoint(names):
            return Verdict(Action.ACK, delivery.deliveries)  # not for this group
        try:
            event = self.registry.build(
                envelope, self.registry.resolve(envelope.event_type, subscribed)
            )
        except EventCodecError as exc:
            return judge(delivery.deliveries, exc.reason, self.policy, poison=True)
        async with _keep_alive(delivery.touch, self.policy.visibility_timeout / 3):
            error = await self._run_handlers(event)
        return judge(delivery.deliveries, error, self.policy)

    async def _run_handlers(self, event: DomainEvent) -> str | None:
        """Await each handler of the event's classes; return the first error, if any."""
        first_error: str | None = None
        for klass in type(event).__mro__:
            for handler in tuple(self._handlers.get(klass, ())):
                try:
                    await handler(event)
                except Exception as exc:  # a handler failure is the message's, not the loop's
                    logger.exception(
                        "event handler %r failed for %s %s",
                        handler,
                        event.event_type,
                        event.event_id,
                        extra=_log_fields(event),
                    )
                    if first_error is None:
                        first_error = f"{type(exc).__name__}: {exc}"
            if klass is DomainEvent:
                break
        return first_error


@contextlib.asynccontextmanager
async def _keep_alive(
    touch: Callable[[], Awaitable[object]] | None, interval: float
) -> AsyncIterator[None]:
    """Call ``touch`` every ``interval`` seconds while the block runs."""
    if touch is None:
        yield
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await touch()
            except Exception:  # the next renewal, or the redelivery, covers it
                logger.debug("could not renew a message's visibility", exc_info=True)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- the loop


class Source(Protocol):
    """A broker's side of a consumer loop."""

    async def fetch(self) -> Sequence[Delivery]:
        """Wait up to a poll interval for messages; return them (or none)."""
        ...

    async def settle(self, delivery: Delivery, verdict: Verdict) -> None:
        """Acknowledge, redeliver later, or dead-letter then acknowledge ``delivery``."""
        ...

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand fetched but unprocessed messages back for immediate redelivery."""
        ...


class ConsumerLoop:
    """Fetches from ``source`` and dispatches, one message at a time, until stopped.

    Messages are handled in the order the broker hands them over; each is settled before
    the next one starts. Errors from the broker (it is down, the connection dropped) are
    logged once per outage and retried with a backoff; nothing is acknowledged that was
    not handled.

    Args:
        source: The broker's side.
        dispatcher: The bus's handlers.
        name: Names the loop in logs (group and consumer).
    """

    def __init__(self, source: Source, dispatcher: Dispatcher, name: str) -> None:
        self.source = source
        self.dispatcher = dispatcher
        self.name = name
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop as a task of the running event loop."""
        self._task = asyncio.create_task(self._run(), name=f"lexigram-bus-{self.name}")

    async def stop(self, timeout: float) -> None:
        """Finish the message in hand, release the fetched rest, and stop.

        After ``timeout`` seconds the loop is cancelled instead; a message it was
        handling is redelivered after the visibility timeout.
        """
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            logger.warning("bus consumer %s did not stop within %gs; cancelled", self.name, timeout)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wait_until_wanted(self) -> None:
        active = self.dispatcher.active
        if active.is_set() or self._stopping:
            return
        self._wake.clear()
        waiters = [asyncio.create_task(active.wait()), asyncio.create_task(self._wake.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wait_until_wanted()
            if self._stopping:
                break
            try:
                batch = await self.source.fetch()
            except Exception as exc:  # the broker is unreachable: wait, then try again
                failures += 1
                if failures == 1:
                    logger.warning("bus consumer %s cannot fetch (%s); retrying", self.name, exc)
                await asyncio.sleep(_RECONNECT.delay(failures))
                continue
            if failures:
                logger.info("bus consumer %s fetches again", self.name)
                failures = 0
            await self._handle(batch)

    async def _handle(self, batch: Sequence[Delivery]) -> None:
        for index, delivery in enumerate(batch):
            if self._stopping or not self.dispatcher.active.is_set():
                await self._release(batch[index:])
                return
            try:
                verdict = await self.dispatcher.deliver(delivery)
            except Exception as exc:  # a bug here must not end the loop: count a failure
                logger.exception("bus consumer %s could not dispatch a message", self.name)
                error = f"{type(exc).__name__}: {exc}"
                verdict = judge(delivery.deliveries, error, self.dispatcher.policy)
            if verdict.action is not Action.ACK:
                logger.log(
                    logging.ERROR if verdict.action is Action.DEAD else logging.INFO,
                    "bus consumer %s: %s of %s %s after delivery %d: %s",
                    self.name,
                    verdict.action.value,
                    delivery.event_type or "a message",
                    delivery.event_id,
                    verdict.deliveries,
                    verdict.reason,
                )
            try:
                await self.source.settle(delivery, verdict)
            except Exception as exc:  # it stays unacknowledged and comes back
                logger.warning(
                    "bus consumer %s could not %s %s %s (%s); it will be redelivered",
                    self.name,
                    verdict.action.value,
                    delivery.event_type or "a message",
                    delivery.event_id,
                    exc,
                )

    async def _release(self, rest: Sequence[Delivery]) -> None:
        if not rest:
            return
        try:
            await self.source.release(rest)
        except Exception as exc:  # they come back after the visibility timeout instead
            logger.debug(
                "bus consumer %s could not release %d messages: %s", self.name, len(rest), exc
            )
