"""``DomainEvent``: the base class of every event published on an event bus."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any, dataclass_transform

__all__ = ["DomainEvent"]

_BASE_FIELDS = frozenset({"event_id", "occurred_at"})


def _new_event_id() -> str:
    return str(uuid.uuid4())


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass_transform(
    kw_only_default=True, frozen_default=True, field_specifiers=(dataclasses.field,)
)
class _EventModel:
    """Turns every subclass into a frozen, keyword-only dataclass."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)


class DomainEvent(_EventModel):
    """Base of all events: declare fields as annotations, build with keyword arguments.

    Every subclass is a frozen, keyword-only dataclass::

        class OrderPlaced(DomainEvent):
            order_id: str

        event = OrderPlaced(order_id="o-1")

    Attributes:
        event_id: A new UUID string unless given.
        occurred_at: When the event happened (UTC now unless given).
    """

    event_id: str = dataclasses.field(default_factory=_new_event_id)
    occurred_at: datetime = dataclasses.field(default_factory=_utc_now)

    @property
    def event_type(self) -> str:
        """The event's type name (its class name)."""
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """Return the event's own fields (all but ``event_id`` and ``occurred_at``)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _BASE_FIELDS
        }
