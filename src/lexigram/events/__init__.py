"""lexigram-events: domain events, an event bus port, and orchestrated sagas.

The saga library lives in :mod:`lexigram.events.sagas`.
"""

import logging

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

# The library never configures logging; without a handler of the application's, nothing
# is printed.
logging.getLogger(__name__).addHandler(logging.NullHandler())
