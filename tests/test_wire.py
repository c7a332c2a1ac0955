"""The broker buses' shared parts, tested without a broker.

The JSON wire format and ``EventRegistry`` (``_wire``); the delivery policy, the
dispatcher and the consumer loop (``_consumer``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from lexigram.events import DomainEvent
from lexigram.events._consumer import (
    Action,
    ConsumerLoop,
    Delivery,
    DeliveryPolicy,
    Dispatcher,
    Verdict,
    judge,
    overdue,
)
from lexigram.events._wire import (
    BASES_HEADER,
    DeadLetter,
    Envelope,
    EventCodecError,
    EventRegistry,
    UnknownEventTypeError,
    encode_event,
    event_bases,
    event_headers,
    parse_bases,
)


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 2


class Shipped(DomainEvent):
    order_id: str
    shipped_at: datetime
    arrives_on: date
    colour: Colour
    size: Size
    tracking: uuid.UUID
    price: Decimal
    weight: float
    delivered_at: datetime | None = None
    scans: tuple[datetime, ...] = ()
    stops: list[str] = dataclasses.field(default_factory=list)
    labels: frozenset[str] = frozenset()
    windows: dict[str, datetime] = dataclasses.field(default_factory=dict)


class ShippedExpress(Shipped):
    hours: int = 4


class Noted(DomainEvent):
    text: str


def shipped(**changes: object) -> Shipped:
    now = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    fields: dict[str, object] = {
        "order_id": "o-1",
        "shipped_at": now,
        "arrives_on": date(2024, 5, 3),
        "colour": Colour.BLUE,
        "size": Size.LARGE,
        "tracking": uuid.UUID(int=7),
        "price": Decimal("12.50"),
        "weight": 2.0,
        "delivered_at": now + timedelta(days=2),
        "scans": (now, now + timedelta(hours=1)),
        "stops": ["Lyon", "Paris"],
        "labels": frozenset({"b", "a"}),
        "windows": {"morning": now},
    }
    fields.update(changes)
    return Shipped(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- encoding


def test_an_event_is_encoded_as_a_json_envelope() -> None:
    """The body is JSON: event_type, event_id, occurred_at and the event's own fields."""
    event = shipped()
    body = json.loads(encode_event(event))
    assert set(body) == {"event_type", "event_id", "occurred_at", "fields"}
    assert body["event_type"] == "Shipped"
    assert body["event_id"] == event.event_id
    assert body["occurred_at"] == event.occurred_at.isoformat()
    assert body["fields"]["shipped_at"] == "2024-05-01T12:30:00+00:00"
    assert body["fields"]["colour"] == "blue"
    assert body["fields"]["size"] == 2
    assert body["fields"]["price"] == "12.50"
    assert body["fields"]["labels"] == ["a", "b"]
    assert body["fields"]["scans"][1] == "2024-05-01T13:30:00+00:00"


def test_a_value_json_cannot_carry_is_an_encoding_error() -> None:
    """An object or NaN in a field raises EventCodecError naming the event."""
    with pytest.raises(EventCodecError, match="cannot encode Noted"):
        encode_event(Noted(text=object()))  # type: ignore[arg-type]
    with pytest.raises(EventCodecError):
        encode_event(shipped(weight=float("nan")))


def test_headers_name_the_type_id_and_bases() -> None:
    """Bases list the event classes of the MRO, the event's own first."""
    event = ShippedExpress(**{**shipped().to_dict(), "hours": 2})
    assert event_bases(ShippedExpress) == ("ShippedExpress", "Shipped", "DomainEvent")
    headers = event_headers(event)
    assert headers["Lexigram-Event-Type"] == "ShippedExpress"
    assert headers["Lexigram-Event-Id"] == event.event_id
    assert parse_bases(headers[BASES_HEADER]) == event_bases(ShippedExpress)
    assert parse_bases(b"A, B") == ("A", "B")
    assert parse_bases(None) is None
    assert parse_bases("") is None


# --------------------------------------------------------------------------- decoding


def test_decoding_rebuilds_every_field_type() -> None:
    """Datetimes, dates, enums, UUIDs, decimals, optionals and containers come back typed."""
    event = shipped()
    back = EventRegistry([Shipped]).decode(encode_event(event))
    assert back == event
    assert isinstance(back, Shipped)
    assert back.occurred_at == event.occurred_at
    assert back.colour is Colour.BLUE
    assert back.size is Size.LARGE
    assert isinstance(back.scans, tuple)
    assert back.windows["morning"].tzinfo is UTC


def test_none_stays_none() -> None:
    """An optional field left None decodes as None."""
    event = shipped(delivered_at=None)
    assert EventRegistry([Shipped]).decode(encode_event(event)) == event


def test_fields_the_class_does_not_declare_are_ignored() -> None:
    """A newer producer's extra field does not break an older consumer."""
    body = json.loads(encode_event(Noted(text="hi")))
    body["fields"]["added_later"] = 1
    back = EventRegistry([Noted]).decode(json.dumps(body).encode())
    assert back == Noted(text="hi", event_id=body["event_id"], occurred_at=back.occurred_at)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"event_id": "e"}', "no event_type"),
        (b'{"event_type": "Noted"}', "no event_id"),
        (b'{"event_type": "Noted", "event_id": "e", "occurred_at": "soon"}', "occurred_at"),
        (
            b'{"event_type": "Noted", "event_id": "e", "occurred_at": "2024-01-01", "fields": 1}',
            "not an object",
        ),
    ],
)
def test_a_malformed_body_is_a_codec_error(body: bytes, reason: str) -> None:
    """Each malformation is named in the error's reason."""
    with pytest.raises(EventCodecError, match=reason):
        Envelope.parse(body)


def test_a_missing_or_unconvertible_field_is_a_codec_error() -> None:
    """Building fails with EventCodecError, not TypeError or ValueError."""
    registry = EventRegistry([Shipped, Noted])
    body = json.loads(encode_event(Noted(text="x")))
    del body["fields"]["text"]
    with pytest.raises(EventCodecError, match="cannot build Noted"):
        registry.decode(json.dumps(body).encode())
    body = json.loads(encode_event(shipped()))
    body["fields"]["shipped_at"] = "not a time"
    with pytest.raises(EventCodecError, match="shipped_at"):
        registry.decode(json.dumps(body).encode())


# --------------------------------------------------------------------------- the registry


def test_an_unknown_type_is_named() -> None:
    """Resolving a name nothing is registered under raises UnknownEventTypeError."""
    with pytest.raises(UnknownEventTypeError, match="unknown event type 'Nope'") as raised:
        EventRegistry().resolve("Nope")
    assert raised.value.event_type == "Nope"


def test_a_subclass_of_a_subscribed_class_is_found_by_name() -> None:
    """``among`` lets the registry find (and remember) a subclass of a subscribed class."""
    registry = EventRegistry()
    assert registry.resolve("ShippedExpress", among=[Shipped]) is ShippedExpress
    assert registry.get("ShippedExpress") is ShippedExpress
    assert "ShippedExpress" in registry.names


def test_two_classes_of_one_name_are_ambiguous_until_one_is_registered() -> None:
    """Discovery refuses to guess between classes sharing a name."""

    class Twin(Noted):
        pass

    first = Twin

    class Twin(Noted):  # type: ignore[no-redef]
        pass

    registry = EventRegistry()
    with pytest.raises(UnknownEventTypeError, match="ambiguous event type 'Twin'"):
        registry.resolve("Twin", among=[Noted])
    registry.register(first)
    assert registry.resolve("Twin", among=[Noted]) is first


def test_registering_two_classes_under_one_name_is_refused() -> None:
    """Explicit registration never silently replaces a class."""

    class Noted(DomainEvent):  # shadows the module's Noted on purpose
        text: str

    registry = EventRegistry([globals()["Noted"]])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Noted)
    with pytest.raises(TypeError, match="DomainEvent subclass"):
        registry.register(int)  # type: ignore[type-var]


def test_register_is_a_decorator_and_beats_what_was_learned() -> None:
    """A class learned by a bus gives way to one registered explicitly."""
    registry = EventRegistry()
    registry.learn(Noted)

    @registry.register
    class Noted2(DomainEvent):
        text: str

    assert registry.get("Noted2") is Noted2
    assert registry.get("Noted") is Noted


# --------------------------------------------------------------------------- the policy


def test_the_policy_validates_its_bounds() -> None:
    """Out-of-range settings raise at construction."""
    with pytest.raises(ValueError, match="max_deliveries"):
        DeliveryPolicy(max_deliveries=0)
    with pytest.raises(TypeError, match="max_deliveries"):
        DeliveryPolicy(max_deliveries=True)
    with pytest.raises(ValueError, match="redelivery_delay"):
        DeliveryPolicy(redelivery_delay=-1)
    with pytest.raises(ValueError, match="visibility_timeout"):
        DeliveryPolicy(visibility_timeout=0)


def test_redelivery_delays_double_up_to_the_cap() -> None:
    """1, 2, 4, ... seconds, never above max_redelivery_delay."""
    policy = DeliveryPolicy(redelivery_delay=1.0, max_redelivery_delay=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert DeliveryPolicy(redelivery_delay=0).delay(3) == 0.0
    assert policy.delay(10_000) == 5.0


def test_judge_acks_retries_then_dead_letters() -> None:
    """Success acks; a failure retries until the last delivery, which dead-letters."""
    policy = DeliveryPolicy(max_deliveries=3, redelivery_delay=0.5)
    assert judge(1, None, policy) == Verdict(Action.ACK, 1)
    assert judge(1, "E: x", policy) == Verdict(Action.RETRY, 1, delay=0.5, reason="E: x")
    assert judge(2, "E: x", policy).delay == 1.0
    dead = judge(3, "E: x", policy)
    assert dead.action is Action.DEAD
    assert dead.reason == "failed 3 deliveries (max_deliveries=3): E: x"
    assert judge(1, "bad body", policy, poison=True) == Verdict(Action.DEAD, 1, reason="bad body")


def test_a_message_past_the_bound_is_overdue() -> None:
    """Delivered more than max_deliveries times without an ack: dead on arrival."""
    policy = DeliveryPolicy(max_deliveries=2)
    assert overdue(2, policy) is None
    late = overdue(3, policy)
    assert late is not None
    assert late.action is Action.DEAD
    assert "without being acknowledged" in late.reason


def test_dead_letter_metadata_is_single_line_and_bounded() -> None:
    """A multi-line, long error becomes one header line of at most 1000 characters."""
    letter = DeadLetter("a\nb\r\n" + "x" * 5000, 3, "svc", "c-1", "s", "7", "Noted", "e-1")
    headers = letter.headers()
    reason = headers["Lexigram-Dead-Reason"]
    assert "\n" not in reason
    assert reason.startswith("a b x")
    assert len(reason) == 1000
    assert headers["Lexigram-Event-Id"] == "e-1"
    assert "Lexigram-Event-Type" not in DeadLetter("r", 1, "g", "c", "s", "1").headers()


# --------------------------------------------------------------------------- dispatching


def delivery(event: DomainEvent | bytes, deliveries: int = 1, **options: object) -> Delivery:
    body = event if isinstance(event, bytes) else encode_event(event)
    bases = None if isinstance(event, bytes) else event_bases(type(event))
    return Delivery(body, deliveries, bases, handle=None, **options)  # type: ignore[arg-type]


def dispatcher(max_deliveries: int = 3, visibility: float = 30.0) -> Dispatcher:
    policy = DeliveryPolicy(max_deliveries=max_deliveries, visibility_timeout=visibility)
    return Dispatcher(EventRegistry(), policy)


async def test_a_subscription_to_a_class_receives_its_subclasses() -> None:
    """Handlers of the event's class and of its bases all run, most specific first."""
    got: list[str] = []

    async def on_shipped(event: Shipped) -> None:
        got.append(f"shipped {type(event).__name__}")

    async def on_any(event: DomainEvent) -> None:
        got.append("any")

    target = dispatcher()
    target.subscribe(Shipped, on_shipped)
    target.subscribe(DomainEvent, on_any)
    express = ShippedExpress(**{**shipped().to_dict(), "hours": 1})
    assert (await target.deliver(delivery(express))).action is Action.ACK
    assert got == ["shipped ShippedExpress", "any"]


async def test_an_event_no_handler_wants_is_acknowledged_unseen() -> None:
    """Another event type is not for this group: ack without building it."""
    target = dispatcher()
    seen: list[DomainEvent] = []

    async def handler(event: DomainEvent) -> None:
        seen.append(event)

    target.subscribe(Noted, handler)
    unknown = b'{"event_type":"Else","event_id":"e","occurred_at":"2024-01-01T00:00:00"}'
    assert (await target.deliver(delivery(unknown))).action is Action.ACK
    assert (await target.deliver(delivery(shipped()))).action is Action.ACK
    assert seen == []


async def test_an_unknown_type_for_a_catch_all_subscription_is_dead() -> None:
    """Subscribed to DomainEvent, an unknown type is dead-lettered with the reason."""
    target = dispatcher()

    async def handler(event: DomainEvent) -> None:
        raise AssertionError("never called")

    target.subscribe(DomainEvent, handler)
    unknown = b'{"event_type":"Else","event_id":"e","occurred_at":"2024-01-01T00:00:00"}'
    verdict = await target.deliver(delivery(unknown))
    assert verdict.action is Action.DEAD
    assert verdict.reason.startswith("unknown event type 'Else'")


async def test_a_failing_handler_makes_a_retry_and_the_others_still_run() -> None:
    """The first error is the verdict's reason; every handler ran."""
    target = dispatcher()
    ran: list[str] = []

    async def failing(event: Noted) -> None:
        ran.append("failing")
        raise KeyError("k")

    async def fine(event: Noted) -> None:
        ran.append("fine")

    target.subscribe(Noted, failing)
    target.subscribe(Noted, fine)
    message = delivery(Noted(text="x"))
    verdict = await target.deliver(message)
    assert verdict.action is Action.RETRY
    assert verdict.reason == "KeyError: 'k'"
    assert ran == ["failing", "fine"]
    assert message.event_type == "Noted"


async def test_an_overdue_message_is_dead_without_running_handlers() -> None:
    """Past max_deliveries the handlers are not called again."""
    target = dispatcher(max_deliveries=2)
    calls: list[DomainEvent] = []

    async def handler(event: Noted) -> None:
        calls.append(event)

    target.subscribe(Noted, handler)
    verdict = await target.deliver(delivery(Noted(text="x"), deliveries=3))
    assert verdict.action is Action.DEAD
    assert calls == []


async def test_a_long_handler_keeps_its_message() -> None:
    """The visibility is renewed every third of the timeout while a handler runs."""
    target = dispatcher(visibility=0.15)
    touches: list[int] = []

    async def touch() -> None:
        touches.append(1)

    async def slow(event: Noted) -> None:
        await asyncio.sleep(0.2)

    target.subscribe(Noted, slow)
    assert (await target.deliver(delivery(Noted(text="x"), touch=touch))).action is Action.ACK
    assert len(touches) >= 2


def test_unsubscribe_says_whether_it_was_subscribed() -> None:
    """The dispatcher is active only while a handler is subscribed."""
    target = dispatcher()

    async def handler(event: Noted) -> None:
        return None

    assert not target.active.is_set()
    target.subscribe(Noted, handler)
    assert target.active.is_set()
    assert target.unsubscribe(Noted, handler) is True
    assert target.unsubscribe(Noted, handler) is False
    assert not target.active.is_set()
    with pytest.raises(TypeError):
        target.subscribe(int, handler)  # type: ignore[type-var,arg-type]


# --------------------------------------------------------------------------- the loop


class FakeSource:
    """Hands out scripted batches; records what was settled and released."""

    def __init__(self, batches: list[Sequence[Delivery] | Exception]) -> None:
        self.batches = batches
        self.settled: list[tuple[str, Action]] = []
        self.released: list[str] = []

    async def fetch(self) -> Sequence[Delivery]:
        await asyncio.sleep(0.01)
        if not self.batches:
            return []
        batch = self.batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        return batch

    async def settle(self, delivery: Delivery, verdict: Verdict) -> None:
        self.settled.append((delivery.event_id, verdict.action))

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        self.released.extend(d.event_id or "unread" for d in deliveries)


async def test_the_loop_rides_out_fetch_errors_and_settles_in_order() -> None:
    """Broker errors are retried; each message is settled before the next starts."""
    first, second = Noted(text="1"), Noted(text="2")
    source = FakeSource([ConnectionError("down"), [delivery(first), delivery(second)]])
    target = dispatcher()
    seen: list[str] = []

    async def handler(event: Noted) -> None:
        seen.append(event.text)

    target.subscribe(Noted, handler)
    loop = ConsumerLoop(source, target, "test")
    loop.start()
    async with asyncio.timeout(5):
        while len(source.settled) < 2:
            await asyncio.sleep(0.01)
    await loop.stop(1.0)
    assert seen == ["1", "2"]
    assert source.settled == [(first.event_id, Action.ACK), (second.event_id, Action.ACK)]


async def test_stopping_releases_the_fetched_rest() -> None:
    """Messages fetched but not started when the loop stops are handed back."""
    events = [Noted(text=str(n)) for n in range(3)]
    source = FakeSource([[delivery(event) for event in events]])
    target = dispatcher()
    loop = ConsumerLoop(source, target, "test")
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(event: Noted) -> None:
        started.set()
        await release.wait()

    target.subscribe(Noted, handler)
    loop.start()
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(loop.stop(5.0))
    await asyncio.sleep(0.01)
    release.set()
    await stopping
    assert source.settled == [(events[0].event_id, Action.ACK)]
    assert len(source.released) == 2


async def test_a_loop_without_handlers_does_not_fetch() -> None:
    """Nothing is taken from the broker until a handler is subscribed."""
    source = FakeSource([[delivery(Noted(text="x"))]])
    loop = ConsumerLoop(source, dispatcher(), "test")
    loop.start()
    await asyncio.sleep(0.05)
    await loop.stop(1.0)
    assert len(source.batches) == 1
