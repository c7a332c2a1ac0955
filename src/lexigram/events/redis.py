"""``RedisStreamsBus``: an ``EventBusProtocol`` on Redis Streams (extra ``redis``).

Needs redis-py (its asyncio client)::

    pip install 'lexigram-events[redis]'

    bus = RedisStreamsBus("redis://127.0.0.1:6379/0", group="billing")
    async with bus:
        manager = SagaManager(store, event_bus=bus)
        manager.start_on(OrderPlaced, "charge")
        ...

Names (defaults in brackets):

- every event is one entry (``XADD``) of the stream [``lexigram.events``]: the JSON body in
  the field ``body``, its type, id and bases in ``Lexigram-Event-*`` fields;
- dead letters are entries of ``<stream>.dead`` [``lexigram.events.dead``];
- each group (the service name) is one consumer group of the stream, created on
  ``start()`` when missing; each process is one consumer in it (``host-pid-random`` unless
  named): processes of one service share the entries, every service gets them all.

An entry is acknowledged (``XACK``) once every matching handler succeeded. A failed
entry stays pending, made claimable again after the policy's delay (its idle time is set
so); every consumer of the group claims entries idle for longer than the visibility
timeout (``XAUTOCLAIM``), those of crashed consumers too. The ``max_deliveries``-th
failure adds the entry to the dead-letter stream with the reason and acknowledges it, in
one ``MULTI``. redis-py reconnects on the next command; while Redis is down ``publish``
returns ``Err`` and the consumer retries with a backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

try:
    import redis.asyncio
    import redis.exceptions
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.typing import EncodableT, FieldT, StreamIdT
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "RedisStreamsBus needs redis-py: pip install 'lexigram-events[redis]'"
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

__all__ = ["DeliveryPolicy", "EventRegistry", "RedisStreamsBus"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=DomainEvent)

BODY_FIELD = "body"
"""The stream field holding the event's JSON."""

_BASES_FIELD = BASES_HEADER.encode()
_Entry = tuple[bytes, dict[bytes, bytes]]


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
        raise ValueError(f"{what} must be a non-empty printable string without spaces: {value!r}")
    return value


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RedisStreamsBus(BrokerBus):
    """Appends events to a Redis stream; a consumer group per service receives them.

    Args:
        url: The Redis URL (``redis://``, ``rediss://``, ``unix://``).
        group: The consumer group: the service's name. Every process of the service
            shares its entries; each group receives every event. Needed to subscribe.
        stream: The stream key.
        dead_letter_stream: Where dead letters go; ``<stream>.dead`` by default.
        consumer: This process's name in the group; ``host-pid-random`` by default. A
            process restarted under the same name takes its pending entries back at
            once instead of after the visibility timeout.
        policy: Redelivery, dead-letter and visibility bounds; ``DeliveryPolicy()``.
        registry: Maps event type names to classes; a fresh one by default.
        from_beginning: A group created now starts at the stream's first entry
            instead of the next one added.
        maxlen: Trim the stream to about this many entries on every publish (``None``:
            never; entries are kept until you trim them).
        batch_size: Entries read per ``XREADGROUP``.
        poll_interval: Seconds a read blocks waiting for entries; pending entries are
            claimed at most this often (``close()`` may wait that long).
        connect_timeout: Seconds ``start()`` (and every reconnection) may take.
        shutdown_timeout: Seconds ``close()`` waits for the entry being handled.
        client_options: More keyword arguments for ``redis.asyncio.Redis.from_url``
            (credentials, TLS, ``retry``, ...).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        group: str | None = None,
        stream: str = "lexigram.events",
        dead_letter_stream: str | None = None,
        consumer: str | None = None,
        policy: DeliveryPolicy | None = None,
        registry: EventRegistry | None = None,
        from_beginning: bool = False,
        maxlen: int | None = None,
        batch_size: int = 16,
        poll_interval: float = 1.0,
        connect_timeout: float = 5.0,
        shutdown_timeout: float = 10.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._url = url
        self._group = None if group is None else _check_name("group", group)
        self._stream = _check_name("stream", stream)
        self._dead_stream = _check_name(
            "dead_letter_stream", dead_letter_stream or f"{stream}.dead"
        )
        if self._dead_stream == self._stream:
            raise ValueError("dead_letter_stream must differ from stream")
        self._consumer = _check_name("consumer", consumer or _default_consumer())
        self._policy = policy if policy is not None else DeliveryPolicy()
        self._registry = registry if registry is not None else EventRegistry()
        self._from_beginning = from_beginning
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be positive or None, got {maxlen}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._maxlen = maxlen
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._connect_timeout = connect_timeout
        self._shutdown_timeout = shutdown_timeout
        self._client_options = dict(client_options or {})
        self._dispatcher = Dispatcher(self._registry, self._policy)
        self._redis: redis.asyncio.Redis | None = None
        self._source: _StreamSource | None = None
        self._loop: ConsumerLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ names

    @property
    def consumer(self) -> str:
        """This process's consumer name in the group."""
        return self._consumer

    @property
    def stream(self) -> str:
        """The stream key events are added to."""
        return self._stream

    @property
    def dead_letter_stream(self) -> str:
        """The stream key dead letters are added to."""
        return self._dead_stream

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, create the group if missing, and start consuming.

        Raises:
            ConnectionError: Redis did not answer.
            RuntimeError: the bus was closed.
        """
        if self._closed:
            raise RuntimeError("this bus is closed; make a new one")
        if self._redis is not None:
            return
        options: dict[str, Any] = {
            "socket_connect_timeout": self._connect_timeout,
            # Above the blocking read's own timeout, so that only a dead link times out.
            "socket_timeout": self._poll_interval + max(5.0, self._connect_timeout),
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            **self._client_options,
            "decode_responses": False,
        }
        client = redis.asyncio.Redis.from_url(self._url, **options)
        ready = False
        try:
            await client.ping()
            if self._group is not None:
                source = _StreamSource(self, client, self._group)
                await source.create_group()
                self._source = source
            ready = True
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ConnectionError(f"cannot reach Redis at {self._url}: {exc}") from exc
        finally:
            if not ready:
                await client.aclose()
        self._redis = client
        if self._source is not None:
            self._loop = ConsumerLoop(
                self._source, self._dispatcher, f"{self._group}/{self._consumer}"
            )
            self._loop.start()

    async def close(self) -> None:
        """Finish the entry in hand, hand back the read rest, and disconnect.

        The consumer is removed from the group when it holds no pending entry.
        """
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            await self._loop.stop(self._shutdown_timeout)
        client = self._redis
        if client is None:
            return
        if self._source is not None:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await self._source.forget_consumer()
        await client.aclose()

    # ------------------------------------------------------------------ the protocol

    async def publish(self, event: DomainEvent) -> Result[None, Exception]:
        """Add ``event`` to the stream; ``Ok`` once Redis stored it (``XADD`` returned).

        Returns ``Err`` (never raises) when the bus is not started, the event cannot be
        encoded, or Redis cannot be reached. Redis does not de-duplicate: a publish
        retried after an ``Err`` may add the event twice; consumers deduplicate by
        ``event_id``.
        """
        client = self._redis
        if client is None or self._closed:
            return Err(RuntimeError("the bus is not started (await bus.start())"))
        try:
            body = encode_event(event)
        except EventCodecError as exc:
            return Err(exc)
        self._registry.learn(type(event))
        fields: dict[FieldT, EncodableT] = {BODY_FIELD: body}
        fields.update(event_headers(event))
        try:
            await client.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
        except Exception as exc:  # the broker's failure is the caller's Err, not a raise
            logger.warning("could not publish %s %s: %r", event.event_type, event.event_id, exc)
            return Err(exc)
        return Ok(None)


class _StreamSource:
    """Reads a consumer group's entries; XACK, delayed reclaim, dead-letter in a MULTI."""

    def __init__(self, bus: RedisStreamsBus, client: redis.asyncio.Redis, group: str) -> None:
        self._client = client
        self._group = group
        self._stream = bus.stream
        self._dead_stream = bus.dead_letter_stream
        self._consumer = bus.consumer
        self._from_beginning = bus._from_beginning
        self._batch = bus._batch_size
        self._poll = bus._poll_interval
        self._visibility_ms = int(bus.policy.visibility_timeout * 1000)
        self._cursor = "0-0"  # where the next XAUTOCLAIM scan goes on
        self._next_claim = 0.0  # monotonic time of the next XAUTOCLAIM
        self._history: str | None = "0"  # where re-reading this consumer's pending goes on

    async def create_group(self) -> None:
        start = "0" if self._from_beginning else "$"
        try:
            await self._client.xgroup_create(self._stream, self._group, id=start, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:
            logger.info("created consumer group %s on %s", self._group, self._stream)

    async def fetch(self) -> Sequence[Delivery]:
        try:
            if self._history is not None:  # first, what this consumer held before a restart
                held = await self._held_before(self._history)
                if held:
                    return held
            now = time.monotonic()
            if now >= self._next_claim:
                claimed = await self._claim()
                # Scan on at once while the pending list has more; else once per poll.
                self._next_claim = now if self._cursor != "0-0" else now + self._poll
                if claimed:
                    return claimed
            reply = await self._client.xreadgroup(
                self._group,
                self._consumer,
                {self._stream: ">"},
                count=self._batch,
                block=max(1, int(self._poll * 1000)),
            )
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.create_group()  # the stream or group was deleted (a flushed server)
            return []
        return [self._delivery(entry, 1) for entry in _entries(reply)]

    async def _claim(self) -> list[Delivery]:
        """Take over entries idle past the visibility timeout (failed ones, or orphans)."""
        reply = await self._client.xautoclaim(
            self._stream,
            self._group,
            self._consumer,
            min_idle_time=self._visibility_ms,
            start_id=self._cursor,
            count=self._batch,
        )
        cursor = reply[0]
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        claimed: list[_Entry] = []
        gone: list[bytes] = []
        for entry_id, fields in reply[1]:
            if fields:
                claimed.append((entry_id, fields))
            elif entry_id is not None:
                gone.append(entry_id)  # trimmed away while pending (Redis 6.2)
        if gone:
            await self._client.xack(self._stream, self._group, *gone)
        return await self._counted(claimed)

    async def _held_before(self, after: str) -> list[Delivery]:
        """Re-read the entries pending for this consumer's name (a restart under it)."""
        reply = await self._client.xreadgroup(
            self._group, self._consumer, {self._stream: after}, count=self._batch
        )
        entries = _entries(reply)
        if not entries:
            self._history = None
            return []
        last = entries[-1][0]
        self._history = last.decode() if isinstance(last, bytes) else str(last)
        return await self._counted(entries)

    async def _counted(self, entries: list[_Entry]) -> list[Delivery]:
        """Deliveries of ``entries`` with the delivery counts Redis keeps for them."""
        if not entries:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(self._stream, self._group, entry_id, entry_id, 1)
            counts = await pipe.execute()
        return [
            self._delivery(entry, int(found[0]["times_delivered"]) if found else 1)
            for entry, found in zip(entries, counts, strict=True)
        ]

    def _delivery(self, entry: _Entry, deliveries: int) -> Delivery:
        entry_id, fields = entry
        client, stream, group, consumer = self._client, self._stream, self._group, self._consumer

        def touch() -> Awaitable[object]:
            return client.xclaim(stream, group, consumer, 0, [entry_id], justid=True)

        return Delivery(
            fields.get(BODY_FIELD.encode(), b""),
            deliveries,
            parse_bases(fields.get(_BASES_FIELD)),
            entry,
            touch=touch,
        )

    async def settle(self, delivery: Delivery, verdict: Verdict) -> None:
        entry_id, fields = delivery.handle
        client = self._client
        if verdict.action is Action.ACK:
            await client.xack(self._stream, self._group, entry_id)
        elif verdict.action is Action.RETRY:
            # Looks idle for (visibility - delay): any consumer claims it `delay` from now.
            idle = max(0, self._visibility_ms - int(verdict.delay * 1000))
            await self._set_idle([entry_id], idle)
        else:
            letter = DeadLetter(
                reason=verdict.reason,
                deliveries=verdict.deliveries,
                group=self._group,
                consumer=self._consumer,
                source=self._stream,
                source_id=entry_id.decode(),
                event_type=delivery.event_type,
                event_id=delivery.event_id,
            )
            dead: dict[FieldT, EncodableT] = {key.decode(): value for key, value in fields.items()}
            dead.update(letter.headers())
            async with client.pipeline(transaction=True) as pipe:
                pipe.xadd(self._dead_stream, dead)
                pipe.xack(self._stream, self._group, entry_id)
                await pipe.execute()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        await self._set_idle([d.handle[0] for d in deliveries], self._visibility_ms)

    async def _set_idle(self, entry_ids: list[StreamIdT], idle_ms: int) -> None:
        await self._client.xclaim(
            self._stream, self._group, self._consumer, 0, entry_ids, idle=idle_ms, justid=True
        )

    async def forget_consumer(self) -> None:
        """Remove this consumer from the group, unless it still holds pending entries."""
        pending = await self._client.xpending_range(
            self._stream, self._group, "-", "+", 1, consumername=self._consumer
        )
        if not pending:
            await self._client.xgroup_delconsumer(self._stream, self._group, self._consumer)


def _entries(reply: Any) -> list[_Entry]:
    """The entries of an ``XREADGROUP`` reply on one stream (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        batches = next(iter(reply.values()))
        return [entry for batch in batches for entry in batch if entry[1] is not None]
    return [entry for entry in reply[0][1] if entry[1] is not None]
