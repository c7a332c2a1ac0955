"""``PostgresSagaStore``'s leases: ``claim`` (with unreadable rows), ``renew``, ``release``.

The statements are ``sql.Statements.claim`` (a batch, oldest first, through the partial
indexes of live sagas) and ``claim_one`` (one saga by id). A claimed row that cannot be
read as a saga is logged, put back as it was (its former lease comes back with every
claimed row), and passed over; the batch is then repeated for the places it took, so one
bad row never hides the sagas after it. ``renew`` and ``release`` are one statement each.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.listener import WorkSignal
from lexigram.events.sagas._postgres.rows import record_from_row
from lexigram.events.sagas._postgres.runner import StatementRunner
from lexigram.events.sagas._postgres.sql import Statements
from lexigram.events.sagas.errors import CorruptRecordError, SagaStoreError
from lexigram.events.sagas.types import SagaRecord

__all__ = ["claim_sagas", "release_lease", "renew_leases"]

logger = logging.getLogger(__name__)


async def claim_sagas(
    db: StatementRunner,
    sql: Statements,
    owner: str,
    lease_id: str,
    *,
    lease: timedelta,
    saga_names: Collection[str],
    limit: int,
    saga_id: str | None,
    exclude: Collection[str],
) -> list[SagaRecord]:
    """Lease up to ``limit`` claimable sagas (or just ``saga_id``); return them oldest first.

    Args:
        db: Runs the statements.
        sql: The statements of the table.
        owner: The claiming worker's name.
        lease_id: The claiming worker's lease id.
        lease: How long the leases last (from the server's ``now()``).
        saga_names: The saga names to claim.
        limit: At most this many.
        saga_id: Only this saga, if given.
        exclude: Ids to pass over.

    Raises:
        TypeError: ``saga_names`` or ``exclude`` is a str (a collection is needed).
    """
    for value, what in ((saga_names, "saga_names"), (exclude, "exclude")):
        if isinstance(value, str):
            raise TypeError(f"{what} must be a collection of str, not a str")
    names = list(dict.fromkeys(saga_names))
    passed_over = list(exclude)
    if not names or limit <= 0 or (saga_id is not None and saga_id in passed_over):
        return []
    found: list[tuple[datetime, str, SagaRecord]] = []
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


async def renew_leases(
    db: StatementRunner,
    sql: Statements,
    owner: str,
    lease_id: str,
    saga_ids: Sequence[str],
    lease: timedelta,
) -> list[str]:
    """Extend the live leases ``owner``/``lease_id`` holds; return the ids it still holds."""
    ids = list(saga_ids)
    if not ids:
        return []
    rows = await db.query(
        "fetch", sql.renew, owner, lease_id, ids, lease, op="renew", idempotent=True
    )
    held = {row["saga_id"] for row in rows}
    return [saga_id for saga_id in ids if saga_id in held]


async def release_lease(
    db: StatementRunner,
    sql: Statements,
    signal: WorkSignal,
    saga_id: str,
    owner: str,
    lease_id: str,
) -> bool:
    """Drop the lease if ``owner``/``lease_id`` holds it; return whether it did.

    The statement notifies waiting workers of every process when the saga becomes
    claimable; this process's waiters are woken directly while nothing listens.
    """
    listening = signal.listening
    row = await db.query(
        "fetchrow", sql.release, saga_id, owner, lease_id, op="release", saga_id=saga_id
    )
    if row is None:
        return False
    if row["notified"] and not listening:
        signal.wake()
    return True
