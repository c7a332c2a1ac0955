"""``NatsJetStreamBus``: an ``EventBusProtocol`` on NATS JetStream (extra ``nats``).

Needs nats-py::

    pip install 'lexigram-events[nats]'

    bus = NatsJetStreamBus("nats://127.0.0.1:4222", group="billing")
    async with bus:
        manager = SagaManager(store, event_bus=bus)
        manager.start_on(OrderPlaced, "charge")
        ...

Names (defaults in brackets):

- events are published to ``<subject_prefix>.<EventType>`` [``lexigram.events.OrderPlaced``]
  with ``Nats-Msg-Id`` = ``event_id`` (JetStream drops a re-publish within the stream's
  duplicate window);
- the stream [``LEXIGRAM_EVENTS``] captures ``<subject_prefix>.>`` on file storage; it
  is created on ``start()`` when missing (an existing one is used as it is);
- dead letters go to ``<subject_prefix>.dead`` in the same stream;
- each group (the service name) is one durable pull consumer, created on ``start()``
  when missing: processes of one service share its messages, every service gets them all.

A message is acknowledged once every matching handler succeeded; a failure NAKs it with
the policy's delay; the ``max_deliveries``-th failure publishes it to the dead-letter
subject with the reason and acknowledges it. The connection reconnects forever; while it
is down ``publish`` returns ``Err`` at once and consumption resumes after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "NatsJetStreamBus needs nats-py: pip install 'lexigram-events[nats]'"
    ) from exc

from lexigram.events._broker import BrokerBus
from lexigram.events._consumer import (
    Action,
    ConsumerLoop,
    Delivery,
    DeliveryPolicy,
    Dispatcher,
    Verdict,
)
from lexigram.events._domain import DomainEvent
from lexigram.events._result import Err, Ok, Result
from lexigram.events._wire import (
    BASES_HEADER,
    DeadLetter,
    EventCodecError,
    EventRegistry,
    encode_event,
    event_headers,
    parse_bases,
)

__all__ = ["DeliveryPolicy", "EventRegistry", "NatsJetStreamBus"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=DomainEvent)

_FORBIDDEN_IN_NAMES = frozenset(".*>/\\ \t\r\n")


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError(f"{what} must be a non-empty printable string, got {value!r}")
    if _FORBIDDEN_IN_NAMES & set(value):
        raise ValueError(f"{what} must not contain '.', '*', '>', slashes or spaces: {value!r}")
    return value


def _check_prefix(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"subject_prefix must be a non-empty string, got {value!r}")
    for token in value.split("."):
        if not token or set(token) & frozenset("*> \t\r\n"):
            raise ValueError(f"subject_prefix must be dot-separated plain tokens: {value!r}")
    return value


class NatsJetStreamBus(BrokerBus):
    """Publishes events to a JetStream stream; a durable consumer per group receives them.

    Args:
        url: The server, or several servers of one cluster.
        group: The consumer group: the service's name. Every process of the service
            shares its messages; each group receives every event. Needed to subscribe.
        stream: The JetStream stream.
        subject_prefix: Events go to ``<subject_prefix>.<EventType>``.
        policy: Redelivery and dead-letter bounds; ``DeliveryPolicy()`` by default. Its
            ``visibility_timeout`` becomes the consumer's ``ack_wait`` when the group is
            created.
        registry: Maps event type names to classes; a fresh one by default.
        from_beginning: A group created now starts at the stream's first event
            instead of the next one published.
        batch_size: Messages fetched per pull request.
        poll_interval: Seconds a pull request waits for messages (``close()`` may wait
            that long for the pull in flight).
        publish_timeout: Seconds ``publish`` waits for the stream's acknowledgement.
        connect_timeout: Seconds ``start()`` waits for a first connection.
        shutdown_timeout: Seconds ``close()`` waits for the message being handled.
        duplicate_window: The de-duplication window of a stream created here, in seconds.
        connect_options: More keyword arguments for ``nats.aio.client.Client.connect``
            (credentials, TLS, ``reconnect_time_wait``, ...).
    """

    def __init__(
        self,
        url: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        group: str | None = None,
        stream: str = "LEXIGRAM_EVENTS",
        subject_prefix: str = "lexigram.events",
        policy: DeliveryPolicy | None = None,
        registry: EventRegistry | None = None,
        from_beginning: bool = False,
        batch_size: int = 16,
        poll_interval: float = 1.0,
        publish_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        duplicate_window: float = 120.0,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._servers = [url] if isinstance(url, str) else list(url)
        self._group = None if group is None else _check_name("group", group)
        self._stream = _check_name("stream", stream)
        self._prefix = _check_prefix(subject_prefix)
        self._policy = policy if policy is not None else DeliveryPolicy()
        self._registry = registry if registry is not None else EventRegistry()
        self._from_beginning = from_beginning
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._shutdown_timeout = shutdown_timeout
        self._duplicate_window = duplicate_window
        self._connect_options = dict(connect_options or {})
        self._dispatcher = Dispatcher(self._registry, self._policy)
        self._consumer = f"{self._group or 'publisher'}@{socket.gethostname()}-{os.getpid()}"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._loop: ConsumerLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ names

    @property
    def stream(self) -> str:
        """The JetStream stream."""
        return self._stream

    @property
    def subject_prefix(self) -> str:
        """The prefix of every subject this bus uses."""
        return self._prefix

    @property
    def dead_letter_subject(self) -> str:
        """Where dead letters are published: ``<subject_prefix>.dead``."""
        return f"{self._prefix}.dead"

    def subject_for(self, event_type: type[DomainEvent] | str) -> str:
        """The subject events of ``event_type`` are published to."""
        name = event_type if isinstance(event_type, str) else event_type.__name__
        return f"{self._prefix}.{name}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, create the stream and the group's consumer if missing, start consuming.

        Raises:
            ConnectionError: no server answered within ``connect_timeout``.
            RuntimeError: the bus was closed.
        """
        if self._closed:
            raise RuntimeError("this bus is closed; make a new one")
        if self._nc is not None:
            return
        nc = Client()
        options: dict[str, Any] = {
            "servers": self._servers,
            "name": self._consumer,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            # Nothing is buffered while disconnected: a publish fails at once (and is not
            # sent later behind the caller's back), a fetch or an ack fails and is retried.
            "pending_size": 0,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnect,
            "reconnected_cb": self._on_reconnect,
            **self._connect_options,
        }
        ready = False
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await nc.connect(**options)
            except TimeoutError as exc:
                servers = ", ".join(self._servers)
                raise ConnectionError(
                    f"cannot reach NATS at {servers} within {self._connect_timeout}s"
                ) from exc
            js = nc.jetstream(timeout=self._publish_timeout)
            await self._ensure_stream(js)
            if self._group is not None:
                await self._ensure_consumer(js, self._group)
                self._pull = await js.pull_subscribe_bind(consumer=self._group, stream=self._stream)
            ready = True
        finally:
            if not ready:
                await _close_quietly(nc)
        self._nc, self._js = nc, js
        if self._pull is not None and self._group is not None:
            source = _JetStreamSource(
                self._pull,
                js,
                group=self._group,
                consumer=self._consumer,
                batch_size=self._batch_size,
                poll_interval=self._poll_interval,
                dead_letter=self._dead_letter,
                dead_letter_subject=self.dead_letter_subject,
                policy=self._policy,
            )
            self._loop = ConsumerLoop(source, self._dispatcher, self._consumer)
            self._loop.start()

    async def close(self) -> None:
        """Finish the message in hand, hand back the fetched rest, and disconnect."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            await self._loop.stop(self._shutdown_timeout)
        nc = self._nc
        if nc is not None:
            if self._pull is not None:
                with contextlib.suppress(Exception):
                    await self._pull.unsubscribe()
            with contextlib.suppress(Exception):  # acks still buffered go out first
                await nc.flush(timeout=2)
            await _close_quietly(nc)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            await js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=self._stream,
                subjects=[f"{self._prefix}.>"],
                storage=StorageType.FILE,
                duplicate_window=self._duplicate_window,
            )
            await js.add_stream(config)
            logger.info("created JetStream stream %s for %s.>", self._stream, self._prefix)

    async def _ensure_consumer(self, js: JetStreamContext, group: str) -> None:
        try:
            await js.consumer_info(self._stream, group)
        except nats.js.errors.NotFoundError:
            pass
        else:
            return  # the group exists: its settings are kept as they are
        config = ConsumerConfig(
            name=group,
            durable_name=group,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if self._from_beginning else DeliverPolicy.NEW,
            ack_wait=self._policy.visibility_timeout,
            max_deliver=-1,  # the bus dead-letters; the server must not drop silently
            filter_subject=f"{self._prefix}.>",
        )
        try:
            await js.add_consumer(self._stream, config)
        except nats.js.errors.BadRequestError:
            await js.consumer_info(self._stream, group)  # another process created it first
        else:
            logger.info("created durable consumer %s on %s", group, self._stream)

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("NATS connection error: %s", exc)

    async def _on_disconnect(self) -> None:
        if not self._closed:
            logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnect(self) -> None:
        logger.info("reconnected to NATS")

    # ------------------------------------------------------------------ the protocol

    async def publish(self, event: DomainEvent) -> Result[None, Exception]:
        """Store ``event`` in the stream; ``Ok`` once JetStream acknowledged it.

        Returns ``Err`` (never raises) when the bus is not started, the event cannot be
        encoded, or the server did not acknowledge in time (it is down, the stream is
        missing): the event may then be stored or not, and publishing it again is safe
        within the duplicate window (same ``event_id``, same ``Nats-Msg-Id``).
        """
        js = self._js
        if js is None or self._closed:
            return Err(RuntimeError("the bus is not started (await bus.start())"))
        try:
            body = encode_event(event)
        except EventCodecError as exc:
            return Err(exc)
        self._registry.learn(type(event))
        headers = {
            "Nats-Msg-Id": event.event_id,
            "Content-Type": "application/json",
            **event_headers(event),
        }
        try:
            await js.publish(
                self.subject_for(event.event_type),
                body,
                timeout=self._publish_timeout,
                stream=self._stream,
                headers=headers,
            )
        except Exception as exc:  # the broker's failure is the caller's Err, not a raise
            logger.warning("could not publish %s %s: %r", event.event_type, event.event_id, exc)
            return Err(exc)
        return Ok(None)

    # ------------------------------------------------------------------ dead letters

    async def _dead_letter(self, js: JetStreamContext, msg: Msg, letter: DeadLetter) -> None:
        headers = {
            key: value
            for key, value in (msg.headers or {}).items()
            if key.startswith("Lexigram-") or key == "Content-Type"
        }
        headers.update(letter.headers())
        # Idempotent: a dead-lettering retried after a lost ack is dropped as a duplicate.
        headers["Nats-Msg-Id"] = f"{self._stream}:{letter.source_id}:dead:{letter.group}"
        await js.publish(
            self.dead_letter_subject,
            msg.data,
            timeout=self._publish_timeout,
            stream=self._stream,
            headers=headers,
        )


class _JetStreamSource:
    """Pulls a durable consumer's messages; acks, NAKs with delay, dead-letters."""

    def __init__(
        self,
        pull: JetStreamContext.PullSubscription,
        js: JetStreamContext,
        *,
        group: str,
        consumer: str,
        batch_size: int,
        poll_interval: float,
        dead_letter: Callable[[JetStreamContext, Msg, DeadLetter], Awaitable[None]],
        dead_letter_subject: str,
        policy: DeliveryPolicy,
    ) -> None:
        self._pull = pull
        self._js = js
        self._group = group
        self._consumer = consumer
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._dead_letter = dead_letter
        self._dead_letter_subject = dead_letter_subject
        self._policy = policy

    async def fetch(self) -> Sequence[Delivery]:
        try:
            messages = await self._pull.fetch(self._batch_size, timeout=self._poll_interval)
        except TimeoutError:  # nothing arrived within the poll interval
            return []
        deliveries: list[Delivery] = []
        for msg in messages:
            if msg.subject == self._dead_letter_subject:
                await msg.ack()  # dead letters share the stream; they are not events
                continue
            bases = parse_bases((msg.headers or {}).get(BASES_HEADER))
            deliveries.append(
                Delivery(msg.data, msg.metadata.num_delivered, bases, msg, touch=msg.in_progress)
            )
        return deliveries

    async def settle(self, delivery: Delivery, verdict: Verdict) -> None:
        msg: Msg = delivery.handle
        if verdict.action is Action.ACK:
            await msg.ack()
        elif verdict.action is Action.RETRY:
            await msg.nak(delay=verdict.delay)
        else:
            letter = DeadLetter(
                reason=verdict.reason,
                deliveries=verdict.deliveries,
                group=self._group,
                consumer=self._consumer,
                source=msg.subject,
                source_id=str(msg.metadata.sequence.stream),
                event_type=delivery.event_type,
                event_id=delivery.event_id,
            )
            try:
                await self._dead_letter(self._js, msg, letter)
            except Exception:
                # Not dead-lettered yet: let it come back (it is dead-lettered on arrival).
                await msg.nak(delay=self._policy.delay(verdict.deliveries))
                raise
            await msg.ack()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await delivery.handle.nak()


async def _close_quietly(nc: Client) -> None:
    with contextlib.suppress(Exception):
        await nc.close()
