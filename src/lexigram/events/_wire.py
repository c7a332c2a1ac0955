"""Events on the wire: the JSON encoding every broker bus uses, and ``EventRegistry``.

Also the metadata a dead letter carries (:class:`DeadLetter`).

An event travels as one JSON object (never pickle: a consumer must not run code a
producer chose)::

    {"event_type": "OrderPlaced", "event_id": "…", "occurred_at": "2024-…+00:00",
     "fields": {"order_id": "o-1", "placed_at": "2024-…+00:00"}}

``fields`` are the event's own fields (``DomainEvent.to_dict()``); times, dates, enums,
UUIDs and decimals are written as text or their value, sets and tuples as arrays. Beside
the body, a bus sends the event's type, id and *bases* (the class names of its MRO up to
``DomainEvent``) as headers (NATS) or stream fields (Redis): a consumer tells from them
whether an event is for one of its subscriptions before it can build it.

On the way back, ``EventRegistry`` maps ``event_type`` names to ``DomainEvent`` classes and
rebuilds typed events: each field is converted back to its annotation
(``typing.get_type_hints``), so a ``datetime`` field is a ``datetime`` again, an
``X | None`` stays ``None`` or becomes an ``X``, a ``tuple[...]`` a tuple.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import types
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from lexigram.events._domain import DomainEvent

__all__ = [
    "BASES_HEADER",
    "EVENT_ID_HEADER",
    "EVENT_TYPE_HEADER",
    "DeadLetter",
    "Envelope",
    "EventCodecError",
    "EventRegistry",
    "UnknownEventTypeError",
    "encode_event",
    "event_bases",
    "event_headers",
    "parse_bases",
]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=DomainEvent)

EVENT_TYPE_HEADER = "Lexigram-Event-Type"
EVENT_ID_HEADER = "Lexigram-Event-Id"
BASES_HEADER = "Lexigram-Event-Bases"
"""Comma-separated class names of the event's MRO, itself first, ``DomainEvent`` last."""

_BASE_FIELDS = frozenset({"event_id", "occurred_at"})
_MAX_REASON = 1000
"""Characters of an error kept in dead-letter metadata (a header line, not a log)."""


class EventCodecError(ValueError):
    """An event could not be encoded, or a message could not be turned back into one.

    Attributes:
        reason: What was wrong, in one line (it goes into dead-letter metadata).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownEventTypeError(EventCodecError):
    """No class is known (or several are) for a message's ``event_type``.

    Attributes:
        event_type: The name the message carried.
    """

    def __init__(self, event_type: str, reason: str) -> None:
        super().__init__(reason)
        self.event_type = event_type


# --------------------------------------------------------------------------- encoding


def _to_json(value: object) -> Any:
    """``json.dumps``'s fallback for the non-JSON values an event field may hold."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)  # a stable order: equal sets encode equally
    raise TypeError(f"{type(value).__name__} is not JSON-encodable")


def encode_event(event: DomainEvent) -> bytes:
    """Return ``event`` as the UTF-8 JSON body every broker bus sends.

    Raises:
        EventCodecError: a field holds a value JSON cannot carry (an object, NaN, ...).
    """
    envelope = {
        "event_type": event.event_type,
        "event_id": event.event_id,
        "occurred_at": event.occurred_at.isoformat(),
        "fields": event.to_dict(),
    }
    try:
        text = json.dumps(
            envelope, default=_to_json, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise EventCodecError(f"cannot encode {event.event_type} {event.event_id}: {exc}") from exc
    return text.encode()


def event_bases(event_type: type[DomainEvent]) -> tuple[str, ...]:
    """The class names of ``event_type``'s MRO that are events, itself first."""
    return tuple(k.__name__ for k in event_type.__mro__ if issubclass(k, DomainEvent))


def event_headers(event: DomainEvent) -> dict[str, str]:
    """The metadata sent beside the body: type, id and bases of ``event``."""
    return {
        EVENT_TYPE_HEADER: event.event_type,
        EVENT_ID_HEADER: event.event_id,
        BASES_HEADER: ",".join(event_bases(type(event))),
    }


def parse_bases(value: str | bytes | None) -> tuple[str, ...] | None:
    """Read a ``BASES_HEADER`` value back (``None`` when the message had none)."""
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    return names or None


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 1] + "…"


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """The metadata published with a dead-lettered message (its body is left as it was).

    Attributes:
        reason: Why it was given up (one line).
        deliveries: How often it had been delivered.
        group: The consumer group that gave up.
        consumer: The consumer (process) that gave up.
        source: Where it came from (subject or stream).
        source_id: Its id there (stream sequence or entry id).
        event_type: Its event type, when it could be read.
        event_id: Its event id, when it could be read.
    """

    reason: str
    deliveries: int
    group: str
    consumer: str
    source: str
    source_id: str
    event_type: str = ""
    event_id: str = ""

    def headers(self) -> dict[str, str]:
        """The metadata as string pairs (NATS headers, Redis stream fields)."""
        fields = {
            "Lexigram-Dead-Reason": _one_line(self.reason),
            "Lexigram-Dead-Deliveries": str(self.deliveries),
            "Lexigram-Dead-Group": self.group,
            "Lexigram-Dead-Consumer": self.consumer,
            "Lexigram-Dead-Source": self.source,
            "Lexigram-Dead-Source-Id": self.source_id,
        }
        if self.event_type:
            fields[EVENT_TYPE_HEADER] = self.event_type
        if self.event_id:
            fields[EVENT_ID_HEADER] = self.event_id
        return fields


# --------------------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A message body parsed as JSON but not yet turned into an event class.

    Attributes:
        event_type: The class name the producer sent.
        event_id: The event's id.
        occurred_at: When it happened.
        fields: The event's own fields, as JSON values.
    """

    event_type: str
    event_id: str
    occurred_at: datetime
    fields: Mapping[str, Any]

    @classmethod
    def parse(cls, body: bytes) -> Envelope:
        """Parse a message body.

        Raises:
            EventCodecError: the body is not the JSON object ``encode_event`` writes.
        """
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise EventCodecError(f"the body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EventCodecError("the body is not a JSON object")
        event_type, event_id = data.get("event_type"), data.get("event_id")
        occurred_at, fields = data.get("occurred_at"), data.get("fields", {})
        if not isinstance(event_type, str) or not event_type:
            raise EventCodecError("the body has no event_type")
        if not isinstance(event_id, str) or not event_id:
            raise EventCodecError(f"the {event_type} body has no event_id")
        if not isinstance(fields, dict):
            raise EventCodecError(f"the fields of {event_type} {event_id} are not an object")
        try:
            when = datetime.fromisoformat(occurred_at) if isinstance(occurred_at, str) else None
        except ValueError:
            when = None
        if when is None:
            raise EventCodecError(f"{event_type} {event_id} has no valid occurred_at")
        return cls(event_type, event_id, when, fields)


def _walk_subclasses(base: type[DomainEvent]) -> Iterator[type[DomainEvent]]:
    seen: set[type[DomainEvent]] = set()
    pending = [base]
    while pending:
        klass = pending.pop()
        if klass in seen:
            continue
        seen.add(klass)
        yield klass
        pending.extend(klass.__subclasses__())


class EventRegistry:
    """Maps ``event_type`` names to ``DomainEvent`` classes, to rebuild typed events.

    A bus registers the classes it publishes and subscribes to by itself, and finds a
    subclass of a subscribed class by its name when one arrives; register the others
    (and settle two classes sharing a name) explicitly::

        registry = EventRegistry([OrderPlaced, PaymentTaken])

        @registry.register
        class OrderShipped(DomainEvent):
            order_id: str

    Args:
        event_types: Classes to register at once.
    """

    def __init__(self, event_types: Iterable[type[DomainEvent]] = ()) -> None:
        self._explicit: dict[str, type[DomainEvent]] = {}
        self._learned: dict[str, type[DomainEvent]] = {}
        self._hints: dict[type[DomainEvent], dict[str, Any]] = {}
        for event_type in event_types:
            self.register(event_type)

    def register(self, event_type: type[E]) -> type[E]:
        """Register ``event_type`` under its class name; return it (usable as a decorator).

        Raises:
            TypeError: ``event_type`` is not a ``DomainEvent`` subclass.
            ValueError: another class is registered under the same name.
        """
        _check_event_class(event_type)
        name = event_type.__name__
        known = self._explicit.get(name)
        if known is not None and known is not event_type:
            raise ValueError(
                f"event type {name!r} is already registered as {_qualified(known)}; "
                f"cannot register {_qualified(event_type)} under the same name"
            )
        self._explicit[name] = event_type
        self._learned.pop(name, None)
        return event_type

    def learn(self, event_type: type[DomainEvent]) -> None:
        """Remember ``event_type`` unless its name is taken (a bus calls this, never fails)."""
        name = event_type.__name__
        if name not in self._explicit and name not in self._learned:
            self._learned[name] = event_type

    def get(self, name: str) -> type[DomainEvent] | None:
        """The class registered (or learned) under ``name``, if any."""
        return self._explicit.get(name) or self._learned.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name known, sorted."""
        return tuple(sorted({*self._explicit, *self._learned}))

    def resolve(self, name: str, among: Iterable[type[DomainEvent]] = ()) -> type[DomainEvent]:
        """The class for ``name``: registered, or the one subclass of ``among`` so named.

        Raises:
            UnknownEventTypeError: no class has that name, or several classes under
                ``among`` do (register the right one).
        """
        known = self.get(name)
        if known is not None:
            return known
        found = {k for base in among for k in _walk_subclasses(base) if k.__name__ == name}
        if len(found) == 1:
            (klass,) = found
            self._learned[name] = klass
            return klass
        if found:
            listed = ", ".join(sorted(_qualified(k) for k in found))
            raise UnknownEventTypeError(
                name,
                f"ambiguous event type {name!r}: several classes have that name ({listed}); "
                "register one in the bus's EventRegistry",
            )
        raise UnknownEventTypeError(
            name, f"unknown event type {name!r}: register its class in the bus's EventRegistry"
        )

    def build(self, envelope: Envelope, event_type: type[E]) -> E:
        """Rebuild an ``event_type`` from a parsed body, converting fields to their types.

        Fields the class does not declare are ignored (a newer producer may send more).

        Raises:
            EventCodecError: a field is missing or cannot be converted.
        """
        hints = self._type_hints(event_type)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(event_type):
            if field.name in _BASE_FIELDS or field.name not in envelope.fields or not field.init:
                continue
            raw = envelope.fields[field.name]
            try:
                values[field.name] = _convert(raw, hints.get(field.name, Any))
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise EventCodecError(
                    f"field {field.name!r} of {envelope.event_type} {envelope.event_id}: {exc}"
                ) from exc
        try:
            return event_type(
                event_id=envelope.event_id, occurred_at=envelope.occurred_at, **values
            )
        except TypeError as exc:
            raise EventCodecError(
                f"cannot build {envelope.event_type} {envelope.event_id}: {exc}"
            ) from exc

    def decode(self, body: bytes, among: Iterable[type[DomainEvent]] = ()) -> DomainEvent:
        """Parse, resolve and build in one call.

        Raises:
            EventCodecError: the body cannot be read or built.
            UnknownEventTypeError: its type is unknown (see ``resolve``).
        """
        envelope = Envelope.parse(body)
        return self.build(envelope, self.resolve(envelope.event_type, among))

    def _type_hints(self, event_type: type[DomainEvent]) -> dict[str, Any]:
        hints = self._hints.get(event_type)
        if hints is None:
            try:
                hints = get_type_hints(event_type)
            except Exception:  # an annotation naming what its module cannot see
                logger.debug("cannot resolve the annotations of %s", _qualified(event_type))
                hints = {
                    f.name: f.type
                    for f in dataclasses.fields(event_type)
                    if isinstance(f.type, type)
                }
            self._hints[event_type] = hints
        return hints


def _check_event_class(event_type: object) -> None:
    if not (isinstance(event_type, type) and issubclass(event_type, DomainEvent)):
        raise TypeError(f"event_type must be a DomainEvent subclass, got {event_type!r}")


def _qualified(klass: type) -> str:
    return f"{klass.__module__}.{klass.__qualname__}"


_SEQUENCES: dict[Any, type] = {
    list: list,
    Sequence: tuple,
    set: set,
    frozenset: frozenset,
}


def _convert(value: Any, hint: Any) -> Any:
    """Turn a JSON value back into what the annotation ``hint`` declares."""
    if value is None:
        return None
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        return _convert(value, options[0]) if len(options) == 1 else value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0]) for item in value)
        if args and len(args) == len(value):
            return tuple(_convert(item, arg) for item, arg in zip(value, args, strict=True))
        return tuple(value)
    if origin in _SEQUENCES and isinstance(value, list):
        item_hint = args[0] if args else Any
        return _SEQUENCES[origin](_convert(item, item_hint) for item in value)
    if origin in (dict, Mapping) and isinstance(value, dict):
        value_hint = args[1] if len(args) == 2 else Any
        return {key: _convert(item, value_hint) for key, item in value.items()}
    if not isinstance(hint, type):
        return value
    return _convert_scalar(value, hint)


def _convert_scalar(value: Any, hint: type) -> Any:
    if isinstance(value, str):
        if issubclass(hint, datetime):
            return datetime.fromisoformat(value)
        if issubclass(hint, date):
            return date.fromisoformat(value)
        if issubclass(hint, time):
            return time.fromisoformat(value)
        if issubclass(hint, uuid.UUID | Decimal):
            return hint(value)
    if issubclass(hint, enum.Enum):
        return hint(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
