"""The store conformance suite: every ``SagaStore`` implementation runs these tests.

A test module subclasses :class:`StoreContract` and provides three fixtures:

- ``store``: a fresh, empty store (closed after the test);
- ``expire_leases``: ``async (store, saga_ids) -> None`` making those sagas' leases expired
  by the store's own judge of time;
- ``corrupt_row``: ``async (store, saga_id, *, fault="garbage") -> None`` storing, under
  ``saga_id``, a row of the saga name ``"orders"``, status ``running``, no lease and
  ``created_at`` :data:`BASE_TIME`, that cannot be read as a saga (see :class:`CorruptRow`).

The suite is one class made of one part per area of the contract, each in its own module:
saving and loading, refused values and unreadable rows, listing and deleting, claims and
leases, what serving workers rely on (due times, cancel requests, wake-ups), and durable
waits (signals, parked sagas), and what operators' tools read (filters, paging, counts). Import
everything from this module; the parts are private.
"""

from __future__ import annotations

from lexigram.events.sagas.testing.contract._claims import ClaimContract
from lexigram.events.sagas.testing.contract._listing import ListingContract
from lexigram.events.sagas.testing.contract._operations import OperationsContract
from lexigram.events.sagas.testing.contract._records import (
    BASE_TIME,
    FAULTS,
    CorruptRow,
    ExpireLeases,
    Fault,
    full_record,
    json_values,
    make_record,
    same_fields,
)
from lexigram.events.sagas.testing.contract._refusals import UNSTORABLE, RefusalContract
from lexigram.events.sagas.testing.contract._saving import SavingContract
from lexigram.events.sagas.testing.contract._service import ServiceContract
from lexigram.events.sagas.testing.contract._signals import SignalContract, parked

__all__ = [
    "BASE_TIME",
    "FAULTS",
    "UNSTORABLE",
    "CorruptRow",
    "ExpireLeases",
    "Fault",
    "StoreContract",
    "full_record",
    "json_values",
    "make_record",
    "parked",
    "same_fields",
]


class StoreContract(
    SavingContract,
    RefusalContract,
    ListingContract,
    ClaimContract,
    ServiceContract,
    SignalContract,
    OperationsContract,
):
    """Behaviour every saga store must show (SPEC sections 7 and 11)."""
