"""``PostgresSagaStore.request_cancel`` and ``cancel_requests``: cancel requests in SQL.

A request lives in two store-managed columns that ``save`` never overwrites, so the
holder's next write does not conflict with it; the statement that stores it also notifies
waiting workers (on commit).
"""

from __future__ import annotations

from lexigram.events.sagas._postgres.listener import WorkSignal
from lexigram.events.sagas._postgres.rows import check_text, record_from_row
from lexigram.events.sagas._postgres.runner import StatementRunner
from lexigram.events.sagas._postgres.sql import Statements
from lexigram.events.sagas.types import SagaRecord

__all__ = ["cancel_requests", "request_cancel"]


async def request_cancel(
    db: StatementRunner, sql: Statements, signal: WorkSignal, saga_id: str, reason: str
) -> SagaRecord | None:
    """Store the request on a live saga not yet asked; return the saga as stored."""
    check_text(saga_id, "saga_id")
    check_text(reason, "reason", stored=True)
    listening = signal.listening
    row = await db.query(
        "fetchrow",
        sql.request_cancel,
        saga_id,
        reason,
        op="request_cancel",
        saga_id=saga_id,
        idempotent=True,
    )
    if row is None:
        return None
    if row["asked"] and not listening:
        signal.wake()
    return record_from_row(row)


async def cancel_requests(
    db: StatementRunner, sql: Statements, owner: str, lease_id: str
) -> dict[str, str]:
    """The live sagas ``owner``/``lease_id`` holds that were asked to cancel: id -> reason."""
    check_text(owner, "owner")
    check_text(lease_id, "lease_id")
    rows = await db.query(
        "fetch", sql.cancel_requests, owner, lease_id, op="cancel_requests", idempotent=True
    )
    return {row["saga_id"]: row["reason"] for row in rows}
