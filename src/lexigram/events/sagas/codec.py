"""JSON encoding of saga records, shared by every store (never pickle).

A record is stored as one JSON document (``FORMAT_VERSION`` in key ``"v"``). Durable
stores also keep a few fields in indexed columns; the fields that claims, renewals and
releases change without rewriting the document (``version``, ``updated_at``, the lease
fields, ``previous_owner``, ``recovery_attempts``) are read from those columns, and the
document is the truth for everything else. Decoding validates every field and raises
``CorruptRecordError`` naming the field, so a corrupt or foreign row is reported instead of
half-read. Error messages never include context payloads, only keys and field names.

What a store can hold is decided here, once, for every store: JSON objects with string keys
at every depth, finite floats, integers JSON can print, and text that UTF-8 can encode (no
lone surrogates). :func:`encode_record` refuses anything else with a ``SagaDataError``
whose ``rejections`` name each value (a :class:`~lexigram.events.sagas.errors.Rejection`),
so the engine can fail the step that produced them and keep everything else.

Custom stores use this module as it is: ``encode_record``/``decode_record`` for a whole
record as one document, or ``dump_record``/``load_record`` around their own JSON library.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from lexigram.events.sagas._values import (
    MAX_SAGA_ID_LENGTH,
    bad_keys,
    check_data,
    check_saga_id,
    dumps_json,
    find_rejections,
    loads_json,
    normalise_json,
    record_is_plain,
    rejected,
    signal_payload_json,
    storable_json,
)
from lexigram.events.sagas.errors import CorruptRecordError
from lexigram.events.sagas.types import (
    FAILURE_KINDS,
    WAIT_KINDS,
    SagaFailure,
    SagaRecord,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
    SagaWait,
)

__all__ = [
    "EPOCH",
    "FORMAT_VERSION",
    "MAX_SAGA_ID_LENGTH",
    "bad_keys",
    "check_data",
    "check_saga_id",
    "decode_record",
    "dump_record",
    "dumps_json",
    "encode_record",
    "find_rejections",
    "format_time",
    "load_record",
    "loads_json",
    "normalise_json",
    "parse_time",
    "record_is_plain",
    "rejected",
    "signal_payload_json",
    "storable_json",
]

FORMAT_VERSION = 1


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The zero of stored times (and the sort key of a record without a creation time)."""
_MICROSECOND = timedelta(microseconds=1)


def format_time(value: datetime | None) -> int | None:
    """Return ``value`` as whole microseconds since 1970-01-01 UTC (``None`` stays ``None``).

    Integers are exact (every microsecond round-trips), sort like the times they stand for,
    and cost a fraction of ISO text to write, which matters because every step rewrites
    the record.
    """
    return None if value is None else (value - EPOCH) // _MICROSECOND


def parse_time(value: object, field: str, saga_id: str | None = None) -> datetime | None:
    """Read a time written by ``format_time``; raise ``CorruptRecordError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return EPOCH + timedelta(microseconds=value)
        except OverflowError:
            pass
    raise CorruptRecordError(
        f"saga record field '{field}' is not a UTC timestamp", saga_id=saga_id, field=field
    )


_ALWAYS = frozenset({"v", "saga_id", "saga_name", "status", "version", "step_name"})
"""Document keys written even at their default value (every other default is left out)."""


def _compact(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without the keys whose value is the default a reader fills in.

    ``None``, ``0``, ``[]`` and ``{}`` are left out (halving a typical document): the
    reader gives a missing key that value. Only the record's and steps' own keys are
    compacted, never what is inside user data, metadata or outputs.
    """
    return {
        key: value
        for key, value in doc.items()
        if key in _ALWAYS or not (value is None or value == 0 or value == [] or value == {})
    }


def _step_to_json(step: SagaStepRecord) -> dict[str, Any]:
    return _compact(
        {
            "step_name": step.step_name,
            "status": step.status.value,
            "started_at": format_time(step.started_at),
            "completed_at": format_time(step.completed_at),
            "output": step.output,
            "error": step.error,
            "attempts": step.attempts,
            "attempt_errors": step.attempt_errors,
            "compensation_attempts": step.compensation_attempts,
            "compensation_error": step.compensation_error,
            "compensated_at": format_time(step.compensated_at),
            "completion_seq": step.completion_seq,
            "visits": step.visits,
            "parent": step.parent,
            "signal_seq": step.signal_seq,
            "signal_visit": step.signal_visit,
        }
    )


def dump_record(record: SagaRecord) -> dict[str, Any]:
    """Return ``record`` as a JSON-ready dict (the shared document shape).

    Keys at their default (``None``, ``0``, empty) are left out; :func:`load_record`
    reads a missing key as its default, and reads documents that have every key alike.
    """
    return _compact(
        {
            "v": FORMAT_VERSION,
            "saga_id": record.saga_id,
            "saga_name": record.saga_name,
            "status": record.status.value,
            "data": record.data,
            "steps": [_step_to_json(step) for step in record.steps.values()],
            "created_at": format_time(record.created_at),
            "updated_at": format_time(record.updated_at),
            "completed_at": format_time(record.completed_at),
            "error": record.error,
            "version": record.version,
            "metadata": record.metadata,
            "deadline_at": format_time(record.deadline_at),
            "current_step": record.current_step,
            "transitions": record.transitions,
            "lease_owner": record.lease_owner,
            "lease_id": record.lease_id,
            "lease_expires_at": format_time(record.lease_expires_at),
            "previous_owner": record.previous_owner,
            "recovery_attempts": record.recovery_attempts,
            "failure": _failure_to_json(record.failure),
            "not_before": format_time(record.not_before),
            "cancel_requested_at": format_time(record.cancel_requested_at),
            "cancel_reason": record.cancel_reason,
            "redrives": record.redrives,
            "waiting": _wait_to_json(record.waiting),
        }
    )


def _wait_to_json(wait: SagaWait | None) -> dict[str, Any] | None:
    if wait is None:
        return None
    return {
        "step": wait.step,
        "kind": wait.kind,
        "signal": wait.signal,
        "until": format_time(wait.until),
        "since": format_time(wait.since),
    }


def _wait_from_json(raw: object, saga_id: str) -> SagaWait | None:
    if raw is None:  # also a document written before the field existed
        return None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("step"), str)
        or raw.get("kind") not in WAIT_KINDS
        or not isinstance(raw.get("signal"), str | None)
    ):
        raise CorruptRecordError(
            "saga record field 'waiting' is malformed", saga_id=saga_id, field="waiting"
        )
    since = parse_time(raw.get("since"), "waiting.since", saga_id)
    if since is None:
        raise CorruptRecordError(
            "saga record field 'waiting' is malformed", saga_id=saga_id, field="waiting"
        )
    until = parse_time(raw.get("until"), "waiting.until", saga_id)
    return SagaWait(raw["step"], raw["kind"], raw["signal"], until, since)


def _failure_to_json(failure: SagaFailure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    doc: dict[str, Any] = {"kind": failure.kind, "step": failure.step, "message": failure.message}
    if failure.cause is not None:  # absent, not null, when there is none (older documents)
        doc["cause"] = _failure_to_json(failure.cause)
    return doc


def _failure_from_json(raw: object, saga_id: str) -> SagaFailure | None:
    if raw is None:  # also a document written before the field existed
        return None
    if (
        not isinstance(raw, dict)
        or raw.get("kind") not in FAILURE_KINDS
        or not isinstance(raw.get("step"), str | None)
        or not isinstance(raw.get("message"), str)
    ):
        raise CorruptRecordError(
            "saga record field 'failure' is malformed", saga_id=saga_id, field="failure"
        )
    cause = _failure_from_json(raw.get("cause"), saga_id)
    return SagaFailure(raw["kind"], raw["step"], raw["message"], cause)


def encode_record(record: SagaRecord) -> str:
    """Return ``record`` as JSON text that every store can hold (valid UTF-8).

    Raises:
        SagaDataError: a value cannot be stored; ``rejections`` names each one (data or
            metadata key, step output, error text), ``keys`` the data keys among them.
    """
    try:
        text = dumps_json(dump_record(record))
    except (TypeError, ValueError, RecursionError):
        raise rejected(record) from None
    if not record_is_plain(record):
        raise rejected(record)
    if not text.isascii():  # O(1) in CPython: ASCII text, the common case, pays nothing
        try:
            text.encode()
        except UnicodeEncodeError:
            raise rejected(record) from None
    return text


_ABSENT = object()


def _field(
    doc: dict[str, Any],
    name: str,
    kinds: type | tuple[type, ...],
    saga_id: str | None,
    *,
    default: Any = _ABSENT,
) -> Any:
    """Read field ``name``; with ``default``, a document without the key reads as that."""
    if default is not _ABSENT and name not in doc:
        return type(default)() if isinstance(default, list | dict) else default
    value = doc.get(name)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise CorruptRecordError(
            f"saga record field '{name}' is missing or has the wrong type",
            saga_id=saga_id,
            field=name,
        )
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))


def _status(
    kind: type[SagaStatus] | type[SagaStepStatus], value: object, field: str, saga_id: str | None
) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value)
    raise CorruptRecordError(
        f"saga record field '{field}' has an unknown status", saga_id=saga_id, field=field
    )


def _step_from_json(raw: object, saga_id: str | None) -> SagaStepRecord:
    if not isinstance(raw, dict):
        raise CorruptRecordError(
            "saga record 'steps' holds a non-object", saga_id=saga_id, field="steps"
        )
    errors = _field(raw, "attempt_errors", list, saga_id, default=[])
    if not all(isinstance(item, str) for item in errors):
        raise CorruptRecordError(
            "saga record field 'attempt_errors' must hold strings",
            saga_id=saga_id,
            field="attempt_errors",
        )
    return SagaStepRecord(
        step_name=_field(raw, "step_name", str, saga_id),
        status=_status(SagaStepStatus, raw.get("status"), "steps.status", saga_id),
        started_at=parse_time(raw.get("started_at"), "steps.started_at", saga_id),
        completed_at=parse_time(raw.get("completed_at"), "steps.completed_at", saga_id),
        output=_field(raw, "output", dict, saga_id, default={}),
        error=_field(raw, "error", _OPT_STR, saga_id, default=None),
        attempts=_field(raw, "attempts", int, saga_id, default=0),
        attempt_errors=errors,
        compensation_attempts=_field(raw, "compensation_attempts", int, saga_id, default=0),
        compensation_error=_field(raw, "compensation_error", _OPT_STR, saga_id, default=None),
        compensated_at=parse_time(raw.get("compensated_at"), "steps.compensated_at", saga_id),
        completion_seq=_field(raw, "completion_seq", _OPT_INT, saga_id, default=None),
        visits=_field(raw, "visits", int, saga_id, default=0),
        parent=_field(raw, "parent", _OPT_STR, saga_id, default=None),
        signal_seq=_field(raw, "signal_seq", _OPT_INT, saga_id, default=None),
        signal_visit=_field(raw, "signal_visit", int, saga_id, default=0),
    )


def load_record(doc: object, *, saga_id: str | None = None) -> SagaRecord:
    """Build a record from a decoded JSON document, validating every field.

    Raises:
        CorruptRecordError: the document is not a saga record of a known format version.
    """
    if not isinstance(doc, dict):
        raise CorruptRecordError("saga record is not a JSON object", saga_id=saga_id)
    version = doc.get("v")
    if version != FORMAT_VERSION:
        raise CorruptRecordError(
            f"saga record has unknown format version {version!r} (this library reads "
            f"{FORMAT_VERSION})",
            saga_id=saga_id,
            field="v",
        )
    own_id = _field(doc, "saga_id", str, saga_id)
    if saga_id is not None and own_id != saga_id:
        raise CorruptRecordError(
            "saga record holds a different saga_id than its key", saga_id=saga_id, field="saga_id"
        )
    steps_raw = _field(doc, "steps", list, own_id, default=[])
    steps: dict[str, SagaStepRecord] = {}
    for raw in steps_raw:
        step = _step_from_json(raw, own_id)
        steps[step.step_name] = step
    return SagaRecord(
        saga_id=own_id,
        saga_name=_field(doc, "saga_name", str, own_id),
        status=_status(SagaStatus, doc.get("status"), "status", own_id),
        data=_field(doc, "data", dict, own_id, default={}),
        steps=steps,
        created_at=parse_time(doc.get("created_at"), "created_at", own_id),
        updated_at=parse_time(doc.get("updated_at"), "updated_at", own_id),
        completed_at=parse_time(doc.get("completed_at"), "completed_at", own_id),
        error=_field(doc, "error", _OPT_STR, own_id, default=None),
        version=_field(doc, "version", int, own_id),
        metadata=_field(doc, "metadata", dict, own_id, default={}),
        deadline_at=parse_time(doc.get("deadline_at"), "deadline_at", own_id),
        current_step=_field(doc, "current_step", _OPT_STR, own_id, default=None),
        transitions=_field(doc, "transitions", int, own_id, default=0),
        lease_owner=_field(doc, "lease_owner", _OPT_STR, own_id, default=None),
        lease_id=_field(doc, "lease_id", _OPT_STR, own_id, default=None),
        lease_expires_at=parse_time(doc.get("lease_expires_at"), "lease_expires_at", own_id),
        previous_owner=_field(doc, "previous_owner", _OPT_STR, own_id, default=None),
        recovery_attempts=_field(doc, "recovery_attempts", int, own_id, default=0),
        failure=_failure_from_json(doc.get("failure"), own_id),
        # Added after format 1 was first written: a document without them reads as none.
        not_before=parse_time(doc.get("not_before"), "not_before", own_id),
        cancel_requested_at=parse_time(
            doc.get("cancel_requested_at"), "cancel_requested_at", own_id
        ),
        cancel_reason=_field(doc, "cancel_reason", _OPT_STR, own_id, default=None),
        redrives=_field(doc, "redrives", int, own_id, default=0),
        waiting=_wait_from_json(doc.get("waiting"), own_id),
    )


def decode_record(text: str | bytes, *, saga_id: str | None = None) -> SagaRecord:
    """Parse JSON text written by ``encode_record``.

    Raises:
        CorruptRecordError: the text is not JSON or not a saga record.
    """
    try:
        doc = loads_json(text.decode() if isinstance(text, bytes) else text)
    except (ValueError, RecursionError):
        raise CorruptRecordError("saga record is not valid JSON", saga_id=saga_id) from None
    return load_record(doc, saga_id=saga_id)
