"""``InMemorySagaStore``: the reference implementation of the ``SagaStore`` contract.

Small and readable on purpose: a custom store can be checked against it with the
conformance suite in ``lexigram.events.sagas.testing.contract``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from lexigram.events.sagas._leases import LeasePolicy, is_claimable
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._memory_rows import (
    CANCEL_AT,
    CANCEL_REASON,
    COMPLETED,
    CREATED,
    EXPIRES,
    LEASE_ID,
    NAME,
    NOT_BEFORE,
    OWNER,
    STATUS,
    VERSION,
    WAITING,
    Query,
    Row,
    StoredSignal,
    is_due,
    plain_fields,
)
from lexigram.events.sagas.codec import (
    EPOCH,
    signal_payload_json,
)
from lexigram.events.sagas.config import check_list_limit, check_list_offset
from lexigram.events.sagas.errors import (
    ConcurrencyConflictError,
    CorruptRecordError,
    SagaFinishedError,
    SagaNotFoundError,
)
from lexigram.events.sagas.types import (
    TERMINAL_SAGA_STATUSES,
    SagaRecord,
    SagaSignal,
    SagaStatus,
)

__all__ = ["InMemorySagaStore"]


logger = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class InMemorySagaStore:
    """A process-local store for tests and single-process services.

    Context data, metadata and step outputs are copied through JSON on every save, as the
    durable stores encode them, so a saga that runs here round-trips its data the same way
    it would on SQLite or PostgreSQL, and a value JSON cannot hold is rejected the same way.
    Nothing survives the process.

    Args:
        clock: Returns the current UTC time (inject one in tests to expire leases).
    """

    def __init__(self, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._rows: dict[str, Row] = {}
        self._signals: dict[str, builtins.list[StoredSignal]] = {}
        self._clock = clock
        self._sleepers: builtins.list[asyncio.Future[None]] = []  # wait_for_work() calls
        self.writes = 0
        """How many writes succeeded (saves, claims, releases): a cheap probe for tests."""

    async def save(self, record: SagaRecord) -> None:
        """Insert (version 0) or conditionally update ``record``; bump ``record.version``."""
        current = self._rows.get(record.saga_id)
        stored_version = 0 if current is None else current.fields[VERSION]
        if stored_version != record.version:
            raise ConcurrencyConflictError(
                record.saga_id,
                expected_version=record.version,
                actual_version=None if current is None else stored_version,
            )
        row = Row.of(record)
        fields = row.fields
        if current is not None:  # a cancel request is the store's: a save keeps it
            fields[CANCEL_AT] = current.fields[CANCEL_AT]
            fields[CANCEL_REASON] = current.fields[CANCEL_REASON]
        if (
            record.lease_owner is None
            and self._sleepers
            and not record.is_terminal
            and (record.waiting is None or is_due(record.not_before, self._clock()))
        ):
            self._wake()  # enqueued or redriven: work no one holds
        fields[VERSION] = record.version = stored_version + 1
        self._rows[record.saga_id] = row
        self.writes += 1

    async def load(self, saga_id: str) -> SagaRecord | None:
        """Return a copy of the saga's record, or ``None``."""
        row = self._rows.get(saga_id)
        return None if row is None else row.record(saga_id)

    async def list_by_name(self, saga_name: str) -> builtins.list[SagaRecord]:
        """Return every readable saga of ``saga_name``, newest first.

        Unreadable rows are logged (``ERROR``, naming the saga) and skipped.
        """
        return self._select(Query(saga_name), None)

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | None = None,
        limit: int = 100,
        waiting: bool | None = None,
        correlation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        offset: int = 0,
    ) -> builtins.list[SagaRecord]:
        """Return up to ``limit`` readable sagas matching the filters, newest first.

        ``waiting=True`` keeps only parked sagas (``record.waiting`` set), ``False`` only
        the others; ``correlation_id`` and ``created_after``/``created_before`` filter
        likewise; ``offset`` skips that many matches (paging).

        Unreadable rows are logged (``ERROR``, naming the saga) and skipped.

        Raises:
            TypeError: ``limit`` is not an int.
            ValueError: ``limit`` is negative or above ``config.MAX_LIST_LIMIT``.
        """
        query = Query(
            saga_name,
            status,
            waiting,
            correlation_id,
            created_after,
            created_before,
            check_list_offset(offset),
        )
        return self._select(query, check_list_limit(limit))

    async def counts(self, *, saga_name: str | None = None) -> dict[str, int]:
        """Count the sagas (of ``saga_name``, or all) by status, and the parked ones."""
        counts = dict.fromkeys([status.value for status in SagaStatus] + ["waiting"], 0)
        for row in self._rows.values():
            fields = row.fields
            if saga_name is None or fields[NAME] == saga_name:
                counts[fields[STATUS].value] += 1
                live = fields[STATUS] not in TERMINAL_SAGA_STATUSES
                if live and fields[WAITING] is not None:
                    counts["waiting"] += 1
        return counts

    def _select(self, query: Query, limit: int | None) -> builtins.list[SagaRecord]:
        found = [
            (row.fields[CREATED] or EPOCH, saga_id)
            for saga_id, row in self._rows.items()
            if query.matches(row.fields)
        ]
        found.sort(reverse=True)
        records: builtins.list[SagaRecord] = []
        skip = query.offset
        for _, saga_id in found:
            if limit is not None and len(records) >= limit:
                break
            try:
                record = self._rows[saga_id].record(saga_id)
                if query.correlation_id is not None and (
                    record.correlation_id != query.correlation_id
                ):
                    continue
                if skip:
                    skip -= 1
                    continue
                records.append(record)
            except CorruptRecordError as exc:
                logger.error(  # noqa: TRY400 - no traceback needed
                    "list: skipping unreadable saga %s: %s",
                    saga_id,
                    exc,
                    extra=log_fields(saga_id=saga_id, saga_name=self._rows[saga_id].fields[NAME]),
                )
        return records

    async def delete(self, saga_id: str) -> bool:
        """Delete the saga (and its signals); return whether it existed."""
        self._signals.pop(saga_id, None)
        return self._rows.pop(saga_id, None) is not None

    async def claim(
        self,
        owner: str,
        lease_id: str,
        *,
        lease_seconds: float,
        saga_names: Collection[str],
        limit: int = 100,
        saga_id: str | None = None,
        exclude: Collection[str] = (),
    ) -> builtins.list[SagaRecord]:
        """Atomically take up to ``limit`` claimable sagas of ``saga_names``, oldest first."""
        now = self._clock()
        names = set(saga_names)
        ids = [saga_id] if saga_id is not None else builtins.list(self._rows)
        passed_over = set(exclude)
        candidates = sorted(
            (row.fields[NOT_BEFORE] or row.fields[CREATED] or EPOCH, key)
            for key in ids
            if (row := self._rows.get(key)) is not None
            and key not in passed_over
            and row.fields[NAME] in names
            and is_claimable(
                row.fields[STATUS],
                row.fields[OWNER],
                row.fields[LEASE_ID],
                row.fields[EXPIRES],
                owner=owner,
                claimer_lease_id=lease_id,
                now=now,
                not_before=row.fields[NOT_BEFORE],
                cancel_requested=row.fields[CANCEL_AT] is not None,
            )
        )
        claimed: builtins.list[SagaRecord] = []
        for _, key in candidates:
            if len(claimed) >= limit:
                break
            try:
                record = self._rows[key].record(key)
            except CorruptRecordError as exc:
                logger.error(  # noqa: TRY400 - no traceback needed
                    "cannot claim saga %s: %s",
                    key,
                    exc,
                    extra=log_fields(
                        saga_id=key, saga_name=self._rows[key].fields[NAME], worker_id=owner
                    ),
                )
                continue
            if record.lease_owner is not None:
                record.recovery_attempts += 1
            record.previous_owner = record.lease_owner
            record.lease_owner = owner
            record.lease_id = lease_id
            record.lease_expires_at = LeasePolicy(lease_seconds).expiry(now)
            record.updated_at = now
            record.version += 1
            self._rows[key].fields = builtins.list(plain_fields(record))
            self.writes += 1
            claimed.append(record)
        return claimed

    async def renew(
        self, owner: str, lease_id: str, saga_ids: Sequence[str], *, lease_seconds: float
    ) -> builtins.list[str]:
        """Extend the leases this worker still holds; return the ids it still holds."""
        expires = LeasePolicy(lease_seconds).expiry(self._clock())
        held: builtins.list[str] = []
        for saga_id in saga_ids:
            row = self._rows.get(saga_id)
            if row is None:
                continue
            fields = row.fields
            if (
                fields[OWNER] != owner
                or fields[LEASE_ID] != lease_id
                or fields[STATUS] in TERMINAL_SAGA_STATUSES
            ):
                continue
            fields[EXPIRES] = expires
            held.append(saga_id)
        return held

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Drop this worker's lease on a saga; return whether it held it."""
        row = self._rows.get(saga_id)
        if row is None or row.fields[OWNER] != owner or row.fields[LEASE_ID] != lease_id:
            return False
        fields = row.fields
        fields[OWNER] = fields[LEASE_ID] = fields[EXPIRES] = None
        fields[VERSION] += 1
        self.writes += 1
        self._wake()
        return True

    async def request_cancel(self, saga_id: str, reason: str) -> SagaRecord | None:
        """Store a cancel request on a live saga without one; return the saga's record."""
        row = self._rows.get(saga_id)
        if row is None:
            return None
        fields = row.fields
        if fields[STATUS] not in TERMINAL_SAGA_STATUSES and fields[CANCEL_AT] is None:
            fields[CANCEL_AT] = self._clock()
            fields[CANCEL_REASON] = reason
            self.writes += 1
            self._wake()
        return row.record(saga_id)

    async def cancel_requests(self, owner: str, lease_id: str) -> dict[str, str]:
        """The live sagas ``owner``/``lease_id`` holds that were asked to cancel."""
        return {
            saga_id: fields[CANCEL_REASON] or ""
            for saga_id, row in self._rows.items()
            if (fields := row.fields)[CANCEL_AT] is not None
            and fields[OWNER] == owner
            and fields[LEASE_ID] == lease_id
            and fields[STATUS] not in TERMINAL_SAGA_STATUSES
        }

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for an enqueue, a release or a cancel request here, or ``timeout``."""
        sleeper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append(sleeper)
        try:
            async with asyncio.timeout(timeout):
                await sleeper
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._sleepers.remove(sleeper)
        return True

    def _wake(self) -> None:
        sleepers, self._sleepers = self._sleepers, []
        for sleeper in sleepers:
            if not sleeper.done():
                sleeper.set_result(None)

    async def delete_terminal(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` terminal sagas completed before ``before``; return how many."""
        doomed = [
            saga_id
            for saga_id, row in self._rows.items()
            if row.fields[STATUS] in TERMINAL_SAGA_STATUSES
            and row.fields[COMPLETED] is not None
            and row.fields[COMPLETED] < before
        ][:limit]
        for saga_id in doomed:
            del self._rows[saga_id]
            self._signals.pop(saga_id, None)
        return len(doomed)

    # ------------------------------------------------------------------ signals

    async def send_signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        """Store a signal for a live saga; ``False`` when ``signal_id`` was stored before.

        Raises:
            SagaNotFoundError: no such saga.
            SagaFinishedError: the saga is terminal (and never had this signal).
            SagaDataError: the payload is not a JSON object a store can hold.
        """
        row = self._rows.get(saga_id)
        if row is None:
            raise SagaNotFoundError.for_id(saga_id)
        signals = self._signals.get(saga_id, [])
        if any(item.signal_id == signal_id for item in signals):
            return False
        fields = row.fields
        if fields[STATUS] in TERMINAL_SAGA_STATUSES:
            raise SagaFinishedError.for_signal(saga_id, fields[STATUS], name)
        text = signal_payload_json(payload)
        now = self._clock()
        seq = signals[-1].seq + 1 if signals else 1
        self._signals.setdefault(saga_id, signals).append(
            StoredSignal(seq, name, signal_id, text, now)
        )
        wait = fields[WAITING]
        if fields[OWNER] is None and wait is not None and wait.signal == name:
            fields[NOT_BEFORE] = now  # parked for it: due now
            self._wake()
        self.writes += 1
        return True

    async def next_signal(self, saga_id: str, name: str, after: int) -> SagaSignal | None:
        """The oldest signal ``name`` of the saga with ``seq`` above ``after``, if any."""
        for item in self._signals.get(saga_id, ()):
            if item.seq > after and item.name == name:
                return item.signal()
        return None

    async def wake(self, saga_id: str) -> bool:
        """Make a free, live saga due now; return whether it was free and live."""
        row = self._rows.get(saga_id)
        if row is None:
            return False
        fields = row.fields
        if fields[OWNER] is not None or fields[STATUS] in TERMINAL_SAGA_STATUSES:
            return False
        fields[NOT_BEFORE] = self._clock()
        self._wake()
        return True

    async def close(self) -> None:
        """Nothing to release; kept for the protocol."""
