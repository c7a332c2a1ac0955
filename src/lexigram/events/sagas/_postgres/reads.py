"""``PostgresSagaStore``'s reads for operators: ``list`` (filtered, paged) and ``counts``.

``list`` is one ``SELECT`` built for the filters given (each shape of statement built once,
on first use), newest first (``created_at DESC, saga_id DESC``), with ``LIMIT``/``OFFSET``.
Every filter is served by an index (see ``schema``): the name, the status, the parked
sagas, the correlation id (each ordered by ``created_at``), or ``created_at`` alone.

Unreadable rows are logged and skipped, and the statement is repeated past them until
``limit`` records are found. ``OFFSET`` counts rows, readable or not: an unreadable row
among the ones skipped moves a page one saga earlier, so a page may repeat a saga of the
previous one, but none is ever left out.

A correlation id that a text column cannot hold (NUL, a lone surrogate) is stored as
``NULL`` (``rows.correlation_column``): ``list`` then reads the rows without one and
compares their records' ids, applying ``offset`` and ``limit`` to those that match.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.rows import check_text, correlation_column, record_from_row
from lexigram.events.sagas._postgres.runner import StatementRunner
from lexigram.events.sagas._postgres.sql import COLUMNS, LIVE, Statements
from lexigram.events.sagas.errors import CorruptRecordError
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["Filters", "Reads", "list_records"]

logger = logging.getLogger(__name__)

_STATUSES = tuple(status.value for status in SagaStatus)


@dataclass(frozen=True, slots=True)
class Filters:
    """The shape of one ``list`` statement: which filters it applies.

    Args:
        name: ``saga_name = $n``.
        status: ``status = $n``.
        waiting: Parked sagas only (``True``), or the others (``False``); no parameter.
        correlation: ``correlation_id = $n``.
        uncorrelated: ``correlation_id IS NULL`` (no parameter): the sagas whose
            correlation id the column cannot hold.
        after: ``created_at >= $n``.
        before: ``created_at < $n``.
    """

    name: bool = False
    status: bool = False
    waiting: bool | None = None
    correlation: bool = False
    uncorrelated: bool = False
    after: bool = False
    before: bool = False

    def statement(self, sql: Statements) -> str:
        """The ``select``, newest first: ``$1`` the limit (``NULL``: none), ``$2`` the offset.

        Then one parameter for each filter that takes one, in the order of the fields.
        """
        numbers = itertools.count(3)
        conditions = []
        if self.name:
            conditions.append(f"saga_name = ${next(numbers)}")
        if self.status:
            conditions.append(f"status = ${next(numbers)}")
        if self.waiting is not None:
            conditions.append(f"waiting IS {'NOT ' if self.waiting else ''}NULL")
        if self.correlation:
            conditions.append(f"correlation_id = ${next(numbers)}")
        if self.uncorrelated:
            conditions.append("correlation_id IS NULL")
        if self.after:
            conditions.append(f"created_at >= ${next(numbers)}")
        if self.before:
            conditions.append(f"created_at < ${next(numbers)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return (
            f"SELECT {COLUMNS} FROM {sql.qualified}{where} "
            "ORDER BY created_at DESC, saga_id DESC LIMIT $1 OFFSET $2"
        )


class Reads:
    """``list`` and ``counts`` of one table.

    Args:
        db: Runs the statements.
        sql: The statements of the table.
    """

    def __init__(self, db: StatementRunner, sql: Statements) -> None:
        self._db = db
        self._sql = sql
        self._selects: dict[Filters, str] = {}
        # One pass over the sagas (of the name): a count per status, and of the parked.
        self._counts = {
            by_name: f"""SELECT status, count(*) AS sagas,
                    count(*) FILTER (WHERE waiting IS NOT NULL AND status IN {LIVE}) AS parked
                FROM {sql.qualified}{" WHERE saga_name = $1" if by_name else ""}
                GROUP BY status"""
            for by_name in (False, True)
        }

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | None = None,
        waiting: bool | None = None,
        correlation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[SagaRecord]:
        """Up to ``limit`` readable sagas matching the filters (``None``: any), newest first.

        Raises:
            TypeError: ``correlation_id`` is not a str, or a time is not a timezone-aware
                datetime.
        """
        args: list[Any] = []
        if saga_name is not None:
            args.append(saga_name)
        if status is not None:
            args.append(SagaStatus(status).value)
        column = None
        if correlation_id is not None:
            check_text(correlation_id, "correlation_id")
            column = correlation_column(correlation_id)
            if column is not None:
                args.append(column)
        for value, what in ((created_after, "created_after"), (created_before, "created_before")):
            if value is not None:
                args.append(_aware(value, what))
        filters = Filters(
            name=saga_name is not None,
            status=status is not None,
            waiting=waiting,
            correlation=column is not None,
            uncorrelated=correlation_id is not None and column is None,
            after=created_after is not None,
            before=created_before is not None,
        )
        statement = self._selects.get(filters)
        if statement is None:
            statement = self._selects[filters] = filters.statement(self._sql)
        if not filters.uncorrelated:
            return await list_records(self._db, statement, args, limit, offset)
        found = [
            record
            for record in await list_records(self._db, statement, args, None)
            if record.correlation_id == correlation_id
        ]
        return found[offset:] if limit is None else found[offset : offset + limit]

    async def counts(self, saga_name: str | None) -> dict[str, int]:
        """``{status value: sagas}`` for every status, and ``"waiting"``: the live parked."""
        args = () if saga_name is None else (saga_name,)
        rows = await self._db.query(
            "fetch", self._counts[saga_name is not None], *args, op="counts", idempotent=True
        )
        counts = dict.fromkeys((*_STATUSES, "waiting"), 0)
        for row in rows:
            if row["status"] in _STATUSES:  # a row edited by hand may hold anything
                counts[row["status"]] = row["sagas"]
            counts["waiting"] += row["parked"]
        return counts


def _aware(value: object, what: str) -> datetime:
    """Return ``value`` if it is a timezone-aware datetime (as stored times are)."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise TypeError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value


async def list_records(
    db: StatementRunner,
    statement: str,
    args: Sequence[Any],
    limit: int | None,
    offset: int = 0,
) -> list[SagaRecord]:
    """Run a ``select`` statement (``$1`` its limit, ``$2`` its offset), past unreadable rows.

    Unreadable rows are skipped and logged. The query is repeated past them until
    ``limit`` records are found or no rows are left, so one bad row never hides the sagas
    after it.

    Args:
        db: Runs the statement.
        statement: One of :meth:`Filters.statement`.
        args: Its arguments after the limit and the offset.
        limit: At most this many records (``None``: all).
        offset: Rows to skip first.
    """
    skipped: set[str] = set()
    while True:
        want = None if limit is None else limit + len(skipped)
        rows = await db.query("fetch", statement, want, offset, *args, op="list", idempotent=True)
        records: list[SagaRecord] = []
        for row in rows:
            try:
                records.append(record_from_row(row))
            except CorruptRecordError as exc:
                if row["saga_id"] not in skipped:
                    skipped.add(row["saga_id"])
                    logger.error(  # noqa: TRY400 - no traceback needed
                        "list: skipping unreadable saga %s: %s",
                        row["saga_id"],
                        exc,
                        extra=log_fields(saga_id=row["saga_id"], saga_name=row["saga_name"]),
                    )
        if limit is None or want is None:
            return records
        if len(records) >= limit or len(rows) < want:
            return records[:limit]
