"""``PostgresSagaStore.list``: newest first, past unreadable rows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.rows import record_from_row
from lexigram.events.sagas._postgres.runner import StatementRunner
from lexigram.events.sagas.errors import CorruptRecordError
from lexigram.events.sagas.types import SagaRecord

__all__ = ["list_records"]

logger = logging.getLogger(__name__)


async def list_records(
    db: StatementRunner, statement: str, args: Sequence[Any], limit: int | None
) -> list[SagaRecord]:
    """Run a ``select`` statement (``$1`` its limit), skipping and logging unreadable rows.

    The query is repeated past unreadable rows until ``limit`` records are found or no
    rows are left, so one bad row never hides the sagas after it.

    Args:
        db: Runs the statement.
        statement: One of ``sql.Statements.select``.
        args: Its arguments after the limit.
        limit: At most this many records (``None``: all).
    """
    skipped: set[str] = set()
    while True:
        want = None if limit is None else limit + len(skipped)
        rows = await db.query("fetch", statement, want, *args, op="list", idempotent=True)
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
