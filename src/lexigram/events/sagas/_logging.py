"""The structured fields of every library log record (SPEC section 12).

Every log call passes ``extra=log_fields(...)``, so each record carries ``saga_id``,
``saga_name``, ``step``, ``attempt`` and ``worker_id`` attributes (``None`` where unknown)
for handlers and formatters to use. Payloads are never logged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LOG_FIELDS", "log_fields"]

LOG_FIELDS = ("saga_id", "saga_name", "step", "attempt", "worker_id")
"""The attributes every log record of the library carries."""


def log_fields(
    *,
    saga_id: str | None = None,
    saga_name: str | None = None,
    step: str | None = None,
    attempt: int | None = None,
    worker_id: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` mapping of one log call."""
    return {
        "saga_id": saga_id,
        "saga_name": saga_name,
        "step": step,
        "attempt": attempt,
        "worker_id": worker_id,
    }
