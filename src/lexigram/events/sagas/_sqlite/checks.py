"""Checks of the arguments ``SQLiteSagaStore`` and its service methods take (loop side).

Each raises a ``TypeError`` or ``ValueError`` naming the argument, before anything is
queued to the store's thread.
"""

from __future__ import annotations

import math
from collections.abc import Collection

__all__ = ["choice", "saga_ids", "text", "wait_timeout"]


def text(name: str, value: object) -> str:
    """``value``, a str.

    Raises:
        TypeError: it is not a str.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` in upper case, if that is one of the ``allowed`` settings.

    Raises:
        ValueError: it is none of them.
    """
    chosen = value.upper() if isinstance(value, str) else None
    if chosen not in allowed:
        options = ", ".join(repr(option) for option in allowed)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")
    return chosen


def saga_ids(name: str, ids: object) -> frozenset[str]:
    """A collection of saga ids, as a set (a lone str is no collection of ids).

    Raises:
        TypeError: ``ids`` is a str, not a collection, or holds a non-str.
    """
    if isinstance(ids, str | bytes) or not isinstance(ids, Collection):
        raise TypeError(f"{name} must be a collection of saga ids, got {type(ids).__name__}")
    found = frozenset(ids)
    if not all(isinstance(saga_id, str) for saga_id in found):
        raise TypeError(f"{name} must hold saga ids (str)")
    return found


def wait_timeout(timeout: object) -> float | None:
    """A wait's timeout in seconds (``None``, to wait forever, for ``math.inf``).

    Raises:
        TypeError: ``timeout`` is not a number.
        ValueError: ``timeout`` is negative or NaN.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)
