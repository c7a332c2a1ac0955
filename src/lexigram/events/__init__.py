"""lexigram-events: domain events, an event bus port, and orchestrated sagas.

The saga library lives in :mod:`lexigram.events.sagas`.
"""

from lexigram.events._bus import EventBusProtocol, EventHandler, InMemoryEventBus
from lexigram.events._domain import DomainEvent
from lexigram.events._result import Err, Ok, Result, UnwrapError

__all__ = [
    "DomainEvent",
    "Err",
    "EventBusProtocol",
    "EventHandler",
    "InMemoryEventBus",
    "Ok",
    "Result",
    "UnwrapError",
]

__version__ = "0.1.0"
