"""What a store can hold, decided once for every store, and the JSON encoder they share.

Public through :mod:`lexigram.events.sagas.codec`, which re-exports every name here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lexigram.events.sagas.errors import Rejection, SagaDataError
from lexigram.events.sagas.types import SagaRecord

__all__ = [
    "MAX_SAGA_ID_LENGTH",
    "bad_keys",
    "check_data",
    "check_saga_id",
    "dumps_json",
    "find_rejections",
    "loads_json",
    "normalise_json",
    "record_is_plain",
    "rejected",
    "signal_payload_json",
    "storable_json",
]


def _refuse(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_dumps() -> Callable[[object], str]:
    """Build the fastest compact, strict (no NaN) JSON encoder this Python offers.

    ``json.dumps`` builds a new C encoder on every call; building it once here halves the
    cost of encoding the small documents a saga writes at every step.
    """
    fallback = json.JSONEncoder(
        ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_refuse
    ).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return fallback
    # markers=None: no cycle check (a cycle ends in RecursionError, which callers handle).
    sort_keys = skip_keys = allow_nan = False
    encode = make(
        None,
        _refuse,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        sort_keys,
        skip_keys,
        allow_nan,
    )
    join = "".join

    def dumps(value: object) -> str:
        if isinstance(value, str):  # the C encoder returns a bare string for these
            return fallback(value)
        return join(encode(value, 0))

    return dumps


dumps_json = _make_dumps()
"""Encode compact, strict JSON (``TypeError``/``ValueError`` on what JSON cannot hold)."""

loads_json: Callable[[str], Any] = json.JSONDecoder().decode
"""Decode JSON text (``ValueError`` when it is not JSON)."""

_dumps = dumps_json
_loads = loads_json


MAX_SAGA_ID_LENGTH = 200
"""Longest ``saga_id`` accepted by ``start()``."""


def check_saga_id(saga_id: object) -> str:
    """Validate a caller-chosen saga id; raise ``SagaDataError`` naming the problem."""
    if not isinstance(saga_id, str):
        raise SagaDataError(f"saga_id must be a str, got {type(saga_id).__name__}")
    if not saga_id or saga_id.strip() != saga_id:
        raise SagaDataError("saga_id must be non-empty, without leading or trailing spaces")
    if len(saga_id) > MAX_SAGA_ID_LENGTH:
        raise SagaDataError(
            f"saga_id is {len(saga_id)} characters long; the limit is {MAX_SAGA_ID_LENGTH}"
        )
    if not saga_id.isprintable():
        raise SagaDataError("saga_id must not contain control characters")
    return saga_id


def check_data(data: object, *, what: str = "data") -> dict[str, Any]:
    """Validate that ``data`` is a JSON object a store can hold; return a detached copy.

    Keys must be strings at every depth (JSON would silently turn others into strings, so a
    value would not round-trip), values JSON values, floats finite, text valid UTF-8.

    Raises:
        SagaDataError: naming the offending top-level keys (never their values).
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SagaDataError(f"saga {what} must be a dict, got {type(data).__name__}")
    try:
        copied: dict[str, Any] | None = _loads(storable_json(data, tuples=True))
    except (TypeError, ValueError, RecursionError):
        copied = None
    if copied is None:
        bad = bad_keys(data)
        names = ", ".join(f"'{key}'" for key in bad)
        raise SagaDataError(
            f"saga {what} is not JSON-serialisable at key(s) {names or '(unknown)'}", keys=bad
        )
    return copied


def signal_payload_json(payload: object) -> str:
    """Return a signal's payload as the JSON text a store keeps (a JSON object).

    Raises:
        SagaDataError: the payload is not a JSON object a store can hold (naming its keys).
    """
    return storable_json(check_data(payload, what="signal payload"))


def storable_json(value: object, *, tuples: bool = False) -> str:
    """Encode ``value`` as JSON text every store can hold, or raise.

    Stricter than ``dumps_json``: keys must be strings at every depth and arrays must be
    lists (JSON would turn other keys into strings and tuples into lists, so the value
    would come back in another shape), and the text must be valid UTF-8 (no lone
    surrogates). With ``tuples=True`` tuples are accepted as arrays (for a copy that is
    read back at once, as ``check_data`` makes).

    Raises:
        TypeError: a value JSON cannot hold, a key that is not a string, or a tuple.
        ValueError: a non-finite float, an integer too long to print, or a lone surrogate.
    """
    text = _dumps(value)
    if not _plain(value, _ARRAYS_AND_TUPLES if tuples else list):
        raise TypeError("JSON object keys must be strings and arrays lists")
    if not text.isascii():  # O(1) in CPython: ASCII text, the common case, pays nothing
        text.encode()  # UnicodeEncodeError (a ValueError) on a lone surrogate
    return text


_ARRAYS_AND_TUPLES = (list, tuple)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: object, arrays: type | tuple[type, ...] = list) -> bool:
    """Whether every dict inside ``value`` has ``str`` keys and every array is an ``arrays``.

    A tuple is not an array a store can give back: it comes back as a list. Runs on every
    write of the user-filled parts, so scalars are skipped by their exact type first.
    """
    kind = type(value)
    if kind is dict or (kind not in _SCALARS and isinstance(value, dict)):
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return False
            if type(item) not in _SCALARS and not _plain(item, arrays):
                return False
        return True
    if kind is list or (kind not in _SCALARS and isinstance(value, list | tuple)):
        if not isinstance(value, arrays):
            return False
        for item in value:  # type: ignore[attr-defined]
            if type(item) not in _SCALARS and not _plain(item, arrays):
                return False
    return True


def normalise_json(value: object) -> Any:
    """Return ``value`` as a store gives it back (tuples as lists), or raise.

    Raises:
        TypeError, ValueError: ``value`` cannot be stored even so (see ``storable_json``).
    """
    return _loads(storable_json(value, tuples=True))


def record_is_plain(record: SagaRecord) -> bool:
    """Whether the parts of ``record`` user code fills come back from a store unchanged.

    Data, metadata and outputs: ``str`` keys and lists (not tuples) at every depth; error
    texts: ``str``. JSON encoding alone would silently coerce the rest. A store that
    encodes a record its own way calls this besides encoding (``encode_record`` does).
    Written out flat: it runs on every write.
    """
    if not (_plain(record.data) and _plain(record.metadata)):
        return False
    if record.error is not None and type(record.error) is not str:
        return False
    for step in record.steps.values():
        if step.output and not _plain(step.output):
            return False
        error, undo_error = step.error, step.compensation_error
        if (error is not None and type(error) is not str) or (
            undo_error is not None and type(undo_error) is not str
        ):
            return False
        for text in step.attempt_errors:
            if type(text) is not str:
                return False
    return True


def _storable(value: object) -> bool:
    try:
        storable_json(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def bad_keys(data: dict[Any, Any]) -> list[str]:
    """Return the top-level keys of ``data`` whose key or value a store cannot hold."""
    return [
        str(key)
        for key, value in data.items()
        if type(key) is not str or not _storable(key) or not _storable(value)
    ]


def find_rejections(record: SagaRecord) -> tuple[Rejection, ...]:
    """Name every value of ``record`` a store cannot hold (empty when it can be stored).

    The slow path, run only after encoding failed: each part is encoded on its own.
    """
    found = [Rejection("data", key) for key in bad_keys(record.data)]
    found += [Rejection("metadata", key) for key in bad_keys(record.metadata)]
    for name, step in record.steps.items():
        if not _storable(step.output):
            found.append(Rejection("output", name))
        texts = [step.error, step.compensation_error, *step.attempt_errors]
        if not all(text is None or (type(text) is str and _storable(text)) for text in texts):
            found.append(Rejection("error", name))
    texts = [record.error, None if record.failure is None else record.failure.message]
    if not all(text is None or (type(text) is str and _storable(text)) for text in texts):
        found.append(Rejection("error", ""))
    return tuple(found)


def rejected(record: SagaRecord) -> SagaDataError:
    """The ``SagaDataError`` for a record that failed to encode, naming every bad value."""
    found = find_rejections(record)
    names = ", ".join(str(item) for item in found) or "a field outside data and steps"
    return SagaDataError(
        f"saga '{record.saga_id}' cannot be stored: not JSON-serialisable at {names}",
        rejections=found,
        saga_id=record.saga_id,
    )
