"""``PostgresSagaStore.claim``: one statement per batch, and what to do with unreadable rows.

The statements are ``sql.Statements.claim`` (a batch, oldest first, through the partial
indexes of live sagas) and ``claim_one`` (one saga by id). A claimed row that cannot be
read as a saga is logged, put back as it was (its former lease comes back with every
claimed row), and passed over; the batch is then repeated for the places it took, so one
bad row never hides the sagas after it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.rows import record_from_row
from lexigram.events.sagas._postgres.runner import StatementRunner
from lexigram.events.sagas._postgres.sql import Statements
from lexigram.events.sagas.errors import CorruptRecordError, SagaStoreError
from lexigram.events.sagas.types import SagaRecord

__all__ = ["claim_sagas"]

logger = logging.getLogger(__name__)


async def claim_sagas(
    db: StatementRunner,
    sql: Statements,
    owner: str,
    lease_id: str,
    *,
    lease: timedelta,
    names: Sequence[str],
    limit: int,
    saga_id: str | None,
    exclude: Sequence[str],
) -> list[SagaRecord]:
    """Lease up to ``limit`` claimable sagas (or just ``saga_id``); return them oldest first.

    Args:
        db: Runs the statements.
        sql: The statements of the table.
        owner: The claiming worker's name.
        lease_id: The claiming worker's lease id.
        lease: How long the leases last (from the server's ``now()``).
        names: The saga names to claim (not empty, no duplicates).
        limit: At most this many (positive).
        saga_id: Only this saga, if given.
        exclude: Ids to pass over.
    """
    found: list[tuple[datetime, str, SagaRecord]] = []
    passed_over = list(exclude)
    while len(found) < limit:
        wanted = limit - len(found)
        if saga_id is None:
            rows = await db.query(
                "fetch_generic",
                sql.claim,
                names,
                owner,
                lease_id,
                lease,
                wanted,
                passed_over,
                op="claim",
            )
        else:
            rows = await db.query(
                "fetch",
                sql.claim_one,
                names,
                owner,
                lease_id,
                lease,
                saga_id,
                op="claim",
                saga_id=saga_id,
            )
        unreadable = 0
        for row in rows:
            try:
                found.append((row["ready_at"], row["saga_id"], record_from_row(row)))
            except CorruptRecordError as exc:
                logger.error(  # noqa: TRY400 - known cause
                    "cannot claim saga %s: %s",
                    row["saga_id"],
                    exc,
                    extra=log_fields(
                        saga_id=row["saga_id"], saga_name=row["saga_name"], worker_id=owner
                    ),
                )
                await _unclaim(db, sql, row, owner)
                passed_over.append(row["saga_id"])
                unreadable += 1
        if not unreadable or len(rows) < wanted or saga_id is not None:
            break
    found.sort(key=lambda item: item[:2])
    return [record for _, _, record in found]


async def _unclaim(db: StatementRunner, sql: Statements, row: Any, owner: str) -> None:
    """Put back the lease an unreadable row had; it expires anyway if this fails."""
    try:
        await db.query(
            "execute",
            sql.unclaim,
            row["saga_id"],
            row["version"],
            row["old_version"],
            row["old_updated_at"],
            row["old_lease_owner"],
            row["old_lease_id"],
            row["old_lease_expires_at"],
            row["old_previous_owner"],
            row["old_recovery_attempts"],
            op="claim",
            saga_id=row["saga_id"],
        )
    except SagaStoreError:
        logger.warning(
            "could not restore the lease of saga %s",
            row["saga_id"],
            exc_info=True,
            extra=log_fields(saga_id=row["saga_id"], saga_name=row["saga_name"], worker_id=owner),
        )
