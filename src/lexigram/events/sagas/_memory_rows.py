"""The stored form of a saga in ``InMemorySagaStore``: rows, list filters, signals.

Kept apart from the store so that the store module reads as the contract's reference
implementation; nothing here is public.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

from lexigram.events.sagas.codec import EPOCH, dumps_json, loads_json, record_is_plain, rejected
from lexigram.events.sagas.errors import CorruptRecordError
from lexigram.events.sagas.types import (
    SagaFailure,
    SagaRecord,
    SagaSignal,
    SagaStatus,
    SagaStepRecord,
)

__all__ = [
    "CANCEL_AT",
    "CANCEL_REASON",
    "COMPLETED",
    "CREATED",
    "EXPIRES",
    "LEASE_ID",
    "NAME",
    "NOT_BEFORE",
    "OWNER",
    "STATUS",
    "VERSION",
    "WAITING",
    "Query",
    "Row",
    "StoredSignal",
    "is_due",
    "plain_fields",
]

# A stored saga is kept as tuples of its immutable fields (ids, statuses, times, counters),
# read in one C call by ``attrgetter``, plus the JSON text of its JSON-valued parts and
# texts (data, metadata, step outputs, every error text). Saving costs one pass over the
# fields and one JSON encoding; loading builds fresh objects from both, so callers always
# get a copy. The payload must be valid UTF-8 and the user-filled parts plain (the codec's
# ``record_is_plain``: str keys, lists, text errors), so this store refuses what the codec
# refuses for the durable stores, with the codec's own ``SagaDataError``. Ids, names and
# owners are checked where they enter (saga ids by ``start()``, names at registration,
# worker ids by the manager: printable text), so of the plain fields only the failure, whose
# message is free text, is checked on every save. Measured on a 3-step record (save + load,
# this machine): 68 us this way against 131 us through the codec's whole-record document,
# so the trick earns its place.
_JSON_FIELDS = ("data", "steps", "metadata", "error")
_STEP_JSON_FIELDS = ("output", "attempt_errors", "error", "compensation_error")
_PLAIN = tuple(name for name in SagaRecord.__slots__ if name not in _JSON_FIELDS)
_STEP_PLAIN = tuple(name for name in SagaStepRecord.__slots__ if name not in _STEP_JSON_FIELDS)
_step_json_fields = attrgetter(*_STEP_JSON_FIELDS)
plain_fields = attrgetter(*_PLAIN)
_step_fields = attrgetter(*_STEP_PLAIN)
_AT = {name: index for index, name in enumerate(_PLAIN)}
NAME, STATUS, VERSION = _AT["saga_name"], _AT["status"], _AT["version"]
CREATED, COMPLETED = _AT["created_at"], _AT["completed_at"]
OWNER, LEASE_ID, EXPIRES = _AT["lease_owner"], _AT["lease_id"], _AT["lease_expires_at"]
FAILURE = _AT["failure"]
NOT_BEFORE = _AT["not_before"]
CANCEL_AT, CANCEL_REASON = _AT["cancel_requested_at"], _AT["cancel_reason"]
WAITING = _AT["waiting"]


def is_due(not_before: datetime | None, now: datetime) -> bool:
    return not_before is None or not_before <= now


@dataclass(frozen=True, slots=True)
class Query:
    """The filters of one ``list`` call (the correlation id is read from the record)."""

    saga_name: str | None = None
    status: SagaStatus | None = None
    waiting: bool | None = None
    correlation_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    offset: int = 0

    def matches(self, fields: builtins.list[Any]) -> bool:
        created = fields[CREATED] or EPOCH
        return (
            (self.saga_name is None or fields[NAME] == self.saga_name)
            and (self.status is None or fields[STATUS] == self.status)
            and (self.waiting is None or (fields[WAITING] is not None) is self.waiting)
            and (self.created_after is None or created >= self.created_after)
            and (self.created_before is None or created < self.created_before)
        )


@dataclass(frozen=True, slots=True)
class StoredSignal:
    """One stored signal; the payload as JSON text (every read builds a fresh copy)."""

    seq: int
    name: str
    signal_id: str
    payload: str
    sent_at: datetime

    def signal(self) -> SagaSignal:
        return SagaSignal(
            self.seq, self.name, self.signal_id, loads_json(self.payload), self.sent_at
        )


@dataclass(slots=True)
class Row:
    """One stored saga: its plain fields, its steps' plain fields, and the JSON rest."""

    fields: builtins.list[Any]
    steps: tuple[tuple[Any, ...], ...]
    payload: str

    @classmethod
    def of(cls, record: SagaRecord) -> Row:
        """Take the parts of ``record`` a store can hold.

        Raises:
            SagaDataError: what ``encode_record`` would raise for ``record``.
        """
        steps = record.steps.values()
        fields = plain_fields(record)
        step_fields = tuple(map(_step_fields, steps))
        try:
            payload = dumps_json(  # the user-filled parts are checked by record_is_plain
                (
                    record.data,
                    record.metadata,
                    record.error,
                    builtins.list(map(_step_json_fields, steps)),
                )
            )
            if not payload.isascii():  # O(1): ASCII, the common case, pays nothing
                payload.encode()  # UnicodeEncodeError on a lone surrogate
        except (TypeError, ValueError, RecursionError):
            raise rejected(record) from None
        failure = fields[FAILURE]
        if not (record_is_plain(record) and (failure is None or _utf8_failure(failure))):
            raise rejected(record)
        return cls(builtins.list(fields), step_fields, payload)

    def record(self, saga_id: str) -> SagaRecord:
        """Build a fresh record from the stored parts.

        Raises:
            CorruptRecordError: the stored parts do not make a record (a test corrupted
                them: this store writes nothing else).
        """
        try:
            data, metadata, error, step_parts = loads_json(self.payload)
            steps = {}
            for fields, parts in zip(self.steps, step_parts, strict=True):
                step = SagaStepRecord(
                    **dict(zip(_STEP_PLAIN, fields, strict=True)),
                    **dict(zip(_STEP_JSON_FIELDS, parts, strict=True)),
                )
                steps[step.step_name] = step
        except (TypeError, ValueError):
            raise CorruptRecordError("stored payload is unreadable", saga_id=saga_id) from None
        return SagaRecord(
            **dict(zip(_PLAIN, self.fields, strict=True)),
            data=data,
            steps=steps,
            metadata=metadata,
            error=error,
        )


def _utf8_failure(failure: SagaFailure) -> bool:
    """Whether a failure's texts are valid UTF-8 (no lone surrogate), as JSON needs."""
    for text in (failure.step or "", failure.message):
        if not text.isascii():  # ASCII, the common case, is O(1)
            try:
                text.encode()
            except UnicodeEncodeError:
                return False
    return failure.cause is None or _utf8_failure(failure.cause)
