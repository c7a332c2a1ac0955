"""``SQLiteSagaStore``'s listings: ``list`` (filtered, paged), ``list_by_name``, ``counts``.

A listing is one ``SELECT`` built for the filters given (each shape built once, on first
use), newest first (``created_at_us DESC, saga_id DESC``), with ``LIMIT``/``OFFSET``. Every
filter is read from an index already in creation order: a correlation id from
``_correlation``, the parked sagas from ``_parked``, a name from ``_name``, a live status
from ``_live``, a creation time range from ``_created`` (or from the other filter's index).

Unreadable rows are logged and skipped, and the statement is repeated past them until
``limit`` records are found. ``OFFSET`` counts rows, readable or not, as PostgreSQL's
store does: an unreadable row among the ones skipped moves a page one saga earlier, so a
page may repeat a saga of the previous one, but none is ever left out.

A correlation id that SQLite cannot hold as text (a lone surrogate, which only an earlier
version could store) is ``NULL`` in the column (see ``schema.fill_correlation_ids``):
``list`` then reads the rows without one and compares their records' ids, applying
``offset`` and ``limit`` to those that match.

:class:`Reads` runs on the event loop (it checks the arguments and picks the statement);
the functions run on the store's thread.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._sqlite.ops import to_record, to_us
from lexigram.events.sagas._sqlite.sql import LIVE, PARKED, READ
from lexigram.events.sagas.errors import CorruptRecordError
from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaRecord, SagaStatus

__all__ = ["Filters", "Query", "Reads", "counts", "is_text", "select"]

logger = logging.getLogger(__name__)

_STATUSES = tuple(status.value for status in SagaStatus)


def is_text(value: str) -> bool:
    """Whether SQLite can hold ``value`` as text (UTF-8 can encode it: no lone surrogate)."""
    if value.isascii():  # O(1): ASCII, the common case, pays nothing more
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Filters:
    """The shape of one listing statement: which filters it applies.

    Args:
        name: ``saga_name = ?``.
        status: ``status = ?``.
        live: The status asked is not terminal: adds the condition of the ``_live`` index
            (SQLite uses a partial index only for a query that states its condition).
        waiting: Parked sagas only (``True``), or the others (``False``); no parameter.
        correlation: ``correlation_id = ?``.
        uncorrelated: ``correlation_id IS NULL`` (no parameter): the sagas whose
            correlation id the column cannot hold.
        after: ``created_at_us >= ?``.
        before: ``created_at_us < ?``.
        limited: Ends with ``LIMIT ? OFFSET ?``.
    """

    name: bool = False
    status: bool = False
    live: bool = False
    waiting: bool | None = None
    correlation: bool = False
    uncorrelated: bool = False
    after: bool = False
    before: bool = False
    limited: bool = True

    def statement(self, table: str) -> str:
        """The ``SELECT``, newest first; its parameters in the order of the fields."""
        where = [
            term
            for term, on in (
                ("saga_name = ?", self.name),
                ("status = ?", self.status),
                (LIVE, self.live),
                (PARKED, self.waiting is True),
                ("waiting_kind IS NULL", self.waiting is False),
                ("correlation_id = ?", self.correlation),
                ("correlation_id IS NULL", self.uncorrelated),
                ("created_at_us >= ?", self.after),
                ("created_at_us < ?", self.before),
            )
            if on
        ]
        sql = f'SELECT {READ} FROM "{table}"'
        if self.waiting and not (self.correlation or self.uncorrelated):
            # The parked sagas only, whatever the other filters: without statistics SQLite
            # would rather walk every saga of the name, finished ones included. (A
            # correlation id picks fewer rows still: its own index then.)
            sql += f' INDEXED BY "{table}_parked"'
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at_us DESC, saga_id DESC"
        return sql + " LIMIT ? OFFSET ?" if self.limited else sql


@dataclass(frozen=True, slots=True)
class Query:
    """One listing to run: the statement, its parameters, and a correlation id to compare.

    Attributes:
        statement: From :meth:`Filters.statement`.
        params: Its parameters but the limit and the offset.
        match: The correlation id the records must have, for the unlimited statement
            that reads the rows without one (``None``: every row found matches).
    """

    statement: str
    params: tuple[Any, ...]
    match: str | None = None


class Reads:
    """The listing statements of one table, each built on first use.

    Args:
        table: The saga table's name (validated).
    """

    def __init__(self, table: str) -> None:
        self._table = table
        self._statements: dict[Filters, str] = {}
        # One pass over the sagas (of the name): a count per status, and of the parked.
        self._counts = {
            by_name: f"SELECT status, count(*), sum(waiting_kind IS NOT NULL AND {LIVE}) "
            f'FROM "{table}"{" WHERE saga_name = ?" if by_name else ""} GROUP BY status'
            for by_name in (False, True)
        }

    def _statement(self, filters: Filters) -> str:
        statement = self._statements.get(filters)
        if statement is None:
            statement = self._statements[filters] = filters.statement(self._table)
        return statement

    def by_name(self, saga_name: str) -> Query:
        """Every saga of ``saga_name`` (``list_by_name``), to run without a limit."""
        return Query(self._statement(Filters(name=True, limited=False)), (saga_name,))

    def query(
        self,
        *,
        saga_name: str | None,
        status: SagaStatus | None,
        waiting: bool | None,
        correlation_id: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
    ) -> Query:
        """The listing for ``SagaStore.list``'s filters (to run with a limit and an offset).

        Raises:
            TypeError: ``waiting`` is not a bool or ``None``, ``correlation_id`` not a
                str, or a time not a timezone-aware datetime.
            ValueError: ``status`` is not a saga status.
        """
        if waiting is not None and not isinstance(waiting, bool):
            raise TypeError(f"waiting must be a bool or None, got {type(waiting).__name__}")
        params: list[Any] = []
        if saga_name is not None:
            params.append(saga_name)
        if status is not None:
            status = SagaStatus(status)
            params.append(status.value)
        text = False
        if correlation_id is not None:
            if not isinstance(correlation_id, str):
                raise TypeError(
                    f"correlation_id must be a str, got {type(correlation_id).__name__}"
                )
            text = is_text(correlation_id)
            if text:
                params.append(correlation_id)
        for value, what in ((created_after, "created_after"), (created_before, "created_before")):
            if value is not None:
                params.append(to_us(_aware(value, what)))
        filters = Filters(
            name=saga_name is not None,
            status=status is not None,
            live=status is not None and status not in TERMINAL_SAGA_STATUSES,
            waiting=waiting,
            correlation=text,
            uncorrelated=correlation_id is not None and not text,
            after=created_after is not None,
            before=created_before is not None,
            limited=correlation_id is None or text,
        )
        match = None if filters.limited else correlation_id
        return Query(self._statement(filters), tuple(params), match)

    def counts(self, saga_name: str | None) -> Query:
        """The ``counts`` statement (of ``saga_name``, or of every saga)."""
        params = () if saga_name is None else (saga_name,)
        return Query(self._counts[saga_name is not None], params)


def _aware(value: object, what: str) -> datetime:
    """Return ``value`` if it is a timezone-aware datetime (as stored times are)."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise TypeError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value


# ---------------------------------------------------------------------- thread side


def select(
    conn: sqlite3.Connection, query: Query, limit: int | None, offset: int = 0
) -> list[SagaRecord]:
    """Up to ``limit`` (``None``: all) readable records ``query`` finds, after ``offset``.

    Unreadable rows are logged and skipped; a limited statement is repeated past them
    until ``limit`` records are found or no rows are left, so one bad row never hides the
    sagas after it. With ``query.match``, the (unlimited) statement is read whole, and
    ``offset`` and ``limit`` apply to the records of that correlation id.
    """
    if query.match is not None:
        every = _records(conn, query.statement, query.params, set())[0]
        found = [record for record in every if record.correlation_id == query.match]
        return found[offset:] if limit is None else found[offset : offset + limit]
    if limit is None:
        return _records(conn, query.statement, query.params, set())[0]
    skipped: set[str] = set()
    while True:
        want = limit + len(skipped)
        records, rows = _records(conn, query.statement, (*query.params, want, offset), skipped)
        if len(records) >= limit or rows < want:
            return records[:limit]


def _records(
    conn: sqlite3.Connection, statement: str, args: tuple[Any, ...], skipped: set[str]
) -> tuple[list[SagaRecord], int]:
    """The readable records of the rows ``statement`` finds, and how many rows it found.

    Unreadable rows are logged, once each: ``skipped`` collects their ids across repeats.
    """
    rows = conn.execute(statement, args).fetchall()
    records: list[SagaRecord] = []
    for row in rows:
        try:
            records.append(to_record(row))
        except CorruptRecordError as exc:
            if row[0] not in skipped:
                skipped.add(row[0])
                logger.error(  # noqa: TRY400 - no traceback needed
                    "list: skipping unreadable saga %s: %s",
                    row[0],
                    exc,
                    extra=log_fields(saga_id=row[0], saga_name=row[1]),
                )
    return records, len(rows)


def counts(conn: sqlite3.Connection, query: Query) -> dict[str, int]:
    """``{status value: sagas}`` for every status, and ``"waiting"``: the live parked."""
    found = dict.fromkeys((*_STATUSES, "waiting"), 0)
    for status, sagas, parked in conn.execute(query.statement, query.params):
        if status in _STATUSES:  # a row edited by hand may hold anything
            found[status] = sagas
            found["waiting"] += parked
    return found
