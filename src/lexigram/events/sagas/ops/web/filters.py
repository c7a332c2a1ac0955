"""The list page's filters and paging, read from (and written back to) its query string.

A value that cannot be read never fails the page: it is dropped and reported in
:attr:`ListQuery.errors`, so the operator sees what was wrong next to the filters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from lexigram.events.sagas.types import SagaStatus

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "ListQuery", "parse_list_query", "parse_time"]

DEFAULT_LIMIT = 50
"""Sagas per page unless ``limit`` says otherwise."""

MAX_LIMIT = 500
"""The most sagas one page shows."""

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*(?:ago)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_TEXT = 200


def parse_time(text: str, now: datetime) -> datetime:
    """``2024-05-01 12:00`` (UTC unless it names an offset), ``2024-05-01``, or ``2h`` ago.

    Raises:
        ValueError: ``text`` is neither, with a message for the operator.
    """
    match = _AGO.match(text)
    if match is not None:
        amount = float(match.group(1)) * _UNITS[match.group(2).lower()]
        if amount > 100 * 365 * 86400:
            raise ValueError(f"{text!r} is too long ago")
        return now - timedelta(seconds=amount)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: write 2024-05-01 12:00 (UTC) or 2h (two hours ago)"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What the list page shows: its filters, and which page.

    Attributes:
        name: Only sagas of this name.
        status: Only sagas in this status.
        correlation_id: Only sagas with this correlation id.
        since: Only sagas created at or after this time.
        until: Only sagas created before this time.
        waiting: Only parked sagas.
        offset: Sagas skipped (paging).
        limit: Sagas per page.
        since_text: ``since`` as the operator wrote it (to fill the form again).
        until_text: ``until`` likewise.
        errors: The values that could not be read, for people.
    """

    name: str | None = None
    status: SagaStatus | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    waiting: bool = False
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    since_text: str = ""
    until_text: str = ""
    errors: tuple[str, ...] = ()

    @property
    def filtered(self) -> bool:
        """Whether any filter is set (paging aside)."""
        return any(
            (self.name, self.status, self.correlation_id, self.since, self.until, self.waiting)
        )

    def store_filters(self) -> dict[str, Any]:
        """The keyword arguments of ``store.list`` this query sets (defaults left out)."""
        chosen: dict[str, Any] = {
            "saga_name": self.name,
            "status": self.status,
            "correlation_id": self.correlation_id,
            "created_after": self.since,
            "created_before": self.until,
            "waiting": True if self.waiting else None,
            "offset": self.offset or None,
        }
        # A store written before a filter existed still serves the pages that do not use it.
        return {key: value for key, value in chosen.items() if value is not None}

    def query_string(self, **changes: Any) -> str:
        """This query (with ``changes``) as a query string, without its default values."""
        query = replace(self, **changes) if changes else self
        pairs = [
            ("name", query.name or ""),
            ("status", "" if query.status is None else query.status.value),
            ("correlation_id", query.correlation_id or ""),
            ("since", query.since_text),
            ("until", query.until_text),
            ("waiting", "1" if query.waiting else ""),
            ("offset", str(query.offset) if query.offset else ""),
            ("limit", str(query.limit) if query.limit != DEFAULT_LIMIT else ""),
        ]
        text = urlencode([(key, value) for key, value in pairs if value])
        return f"?{text}" if text else ""


def parse_list_query(params: Mapping[str, str], now: datetime) -> ListQuery:
    """Read the list page's query string; report what cannot be read instead of failing."""
    errors: list[str] = []

    def text(key: str) -> str | None:
        value = params.get(key, "").strip()[:_MAX_TEXT]
        return value or None

    status: SagaStatus | None = None
    waiting = params.get("waiting", "").lower() in ("1", "on", "true", "yes")
    raw_status = text("status")
    if raw_status == "waiting":  # the "waiting" chip: parked sagas, whatever their status
        waiting = True
    elif raw_status is not None:
        try:
            status = SagaStatus(raw_status)
        except ValueError:
            errors.append(f"status: {raw_status!r} is not a saga status")
    times: dict[str, datetime | None] = {}
    for key, label in (("since", "created since"), ("until", "created until")):
        raw = text(key)
        times[key] = None
        if raw is not None:
            try:
                times[key] = parse_time(raw, now)
            except ValueError as exc:
                errors.append(f"{label}: {exc}")
    offset = _count(params.get("offset"), 0, "offset", errors)
    limit = min(max(_count(params.get("limit"), DEFAULT_LIMIT, "limit", errors), 1), MAX_LIMIT)
    return ListQuery(
        name=text("name"),
        status=status,
        correlation_id=text("correlation_id"),
        since=times["since"],
        until=times["until"],
        waiting=waiting,
        offset=offset,
        limit=limit,
        since_text=text("since") or "",
        until_text=text("until") or "",
        errors=tuple(errors),
    )


def _count(raw: str | None, default: int, label: str, errors: list[str]) -> int:
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0 or value > 10**9:
        errors.append(f"{label}: {raw[:20]!r} is not a count")
        return default
    return value
