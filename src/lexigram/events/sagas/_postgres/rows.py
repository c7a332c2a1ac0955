"""Rows of ``PostgresSagaStore``'s table to records, and records to statement arguments.

A row is the shared codec's JSON document plus columns (see ``sql``). Reading lays the
store-managed columns (version, ``updated_at``, the lease, ``previous_owner``,
``recovery_attempts``, ``not_before``, the cancel request) over the decoded document,
because ``claim``, ``renew``, ``release``, ``request_cancel``, ``send_signal`` and ``wake``
change them in SQL without rewriting the document (``save`` writes ``not_before`` with the
document; a row of schema version 1 has it in neither).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lexigram.events.sagas.codec import EPOCH, decode_record, encode_record
from lexigram.events.sagas.errors import CorruptRecordError
from lexigram.events.sagas.types import SagaRecord

__all__ = [
    "UPDATE_ARGUMENTS",
    "check_text",
    "correlation_column",
    "record_from_row",
    "save_arguments",
]

UPDATE_ARGUMENTS = 17
"""How many of :func:`save_arguments` the update statements take."""


def record_from_row(row: Any) -> SagaRecord:
    """Decode a row selected with ``sql``'s column list.

    Raises:
        CorruptRecordError: the document is not a saga record, or its name or status
            disagrees with the columns queries filter on (a row edited by hand).
    """
    saga_id = row["saga_id"]
    record = decode_record(row["doc"], saga_id=saga_id)
    for field, held in (("saga_name", record.saga_name), ("status", record.status.value)):
        if row[field] != held:
            raise CorruptRecordError(
                f"column '{field}' disagrees with the stored document",
                saga_id=saga_id,
                field=field,
            )
    record.version = row["version"]
    record.updated_at = row["updated_at"]
    record.lease_owner = row["lease_owner"]
    record.lease_id = row["lease_id"]
    record.lease_expires_at = row["lease_expires_at"]
    record.previous_owner = row["previous_owner"]
    record.recovery_attempts = row["recovery_attempts"]
    record.not_before = row["not_before"]
    record.cancel_requested_at = row["cancel_requested_at"]
    record.cancel_reason = row["cancel_reason"]
    return record


def save_arguments(record: SagaRecord) -> tuple[Any, ...]:
    """The ``$1..$19`` arguments of the insert statements for ``record``.

    The update statements take the first 17 (:data:`UPDATE_ARGUMENTS`): ``$18``/``$19``,
    the cancel request, are written by an insert only (``request_cancel`` owns them after).
    ``$15``/``$16`` are the wait's kind and signal (``NULL`` unless the saga is parked),
    ``$17`` the correlation id's column (:func:`correlation_column`), written by every save
    because a step may change ``ctx.metadata["correlation_id"]``.

    The lease is passed as its length (``lease_expires_at - updated_at``, as the engine
    stamps both from one clock reading); the server adds it to its own ``now()``. A record
    without an owner or an expiry stores no lease.

    Raises:
        SagaDataError: the codec's refusal of a value no store can hold, raised before
            anything is sent (so the text sent is always valid UTF-8).
    """
    doc = encode_record(record)
    lease: timedelta | None = None
    wait = record.waiting
    if (
        record.lease_owner is not None
        and record.lease_expires_at is not None
        and record.updated_at is not None
    ):
        lease = record.lease_expires_at - record.updated_at
    return (
        record.saga_id,
        record.version,
        record.saga_name,
        record.status.value,
        record.created_at or EPOCH,  # ordering columns are NOT NULL; the document keeps None
        record.updated_at,
        record.completed_at,
        record.lease_owner,
        record.lease_id,
        lease,
        record.previous_owner,
        record.recovery_attempts,
        doc,
        record.not_before,
        None if wait is None else wait.kind,
        None if wait is None else wait.signal,
        correlation_column(record.correlation_id),
        record.cancel_requested_at,
        record.cancel_reason,
    )


def correlation_column(correlation_id: str) -> str | None:
    """The ``correlation_id`` column's value for a correlation id: itself, if text can hold it.

    A PostgreSQL text column holds neither NUL nor a lone surrogate; an id holding one is
    stored as ``NULL`` (``list`` finds such sagas by reading their records).
    """
    if "\x00" in correlation_id:
        return None
    if not correlation_id.isascii():  # O(1): ASCII, the common case, pays nothing more
        try:
            correlation_id.encode()
        except UnicodeEncodeError:
            return None
    return correlation_id


def check_text(value: object, what: str, *, stored: bool = False) -> None:
    """Refuse an argument that is not a str (or, if ``stored``, that a text column refuses).

    Raises:
        TypeError: ``value`` is not a str (naming ``what``).
        ValueError: ``stored`` and ``value`` holds NUL or a lone surrogate.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not stored:
        return
    if "\x00" in value:
        raise ValueError(f"{what} must not hold NUL characters (PostgreSQL text cannot)")
    if not value.isascii():  # O(1): ASCII, the common case, pays nothing more
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(
                f"{what} must be valid UTF-8 text (it holds a lone surrogate)"
            ) from None
