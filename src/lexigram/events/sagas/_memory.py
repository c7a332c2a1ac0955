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
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from lexigram.events.sagas._leases import LeasePolicy, is_claimable
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas.codec import (
    EPOCH,
    dumps_json,
    loads_json,
    record_is_plain,
    rejected,
    signal_payload_json,
)
from lexigram.events.sagas.config import check_list_limit
from lexigram.events.sagas.errors import (
    ConcurrencyConflictError,
    CorruptRecordError,
    SagaFinishedError,
    SagaNotFoundError,
)
from lexigram.events.sagas.types import (
    TERMINAL_SAGA_STATUSES,
    SagaFailure,
    SagaRecord,
    SagaSignal,
    SagaStatus,
    SagaStepRecord,
)

__all__ = ["InMemorySagaStore"]

logger = logging.getLogger(__name__)


# A stored saga is kept as tuples of its immutable fields (ids, statuses, times, counters),
# read in one C call by ``attrgetter``, plus the JSON text of its JSON-valued parts and
# texts (data, metadata, step outputs, every error text). Saving costs one pass over the
# fields and one JSON encoding; loading builds fresh objects from both, so callers always
# get a copy. The payload must be valid UTF-8 and the user-filled parts plain (the codec's
# ``record_is_plain``: str keys, lists, text errors), so this store refuses what the codec
# refuses for the durable stores, with the codec's own ``SagaDataError``. Ids, names and
# owners are checked where they enter (saga ids by ``start()``, names at registration,
# worker ids by the manager: printable text), so of the plain fields only the failure, whose
# message is free text, is checked on every save. Measured on a 3-step record (save + load,
# this machine): 68 us this way against 131 us through the codec's whole-record document,
# so the trick earns its place.
_JSON_FIELDS = ("data", "steps", "metadata", "error")
_STEP_JSON_FIELDS = ("output", "attempt_errors", "error", "compensation_error")
_PLAIN = tuple(name for name in SagaRecord.__slots__ if name not in _JSON_FIELDS)
_STEP_PLAIN = tuple(name for name in SagaStepRecord.__slots__ if name not in _STEP_JSON_FIELDS)
_step_json_fields = attrgetter(*_STEP_JSON_FIELDS)
_plain_fields = attrgetter(*_PLAIN)
_step_fields = attrgetter(*_STEP_PLAIN)
_AT = {name: index for index, name in enumerate(_PLAIN)}
_NAME, _STATUS, _VERSION = _AT["saga_name"], _AT["status"], _AT["version"]
_CREATED, _COMPLETED = _AT["created_at"], _AT["completed_at"]
_OWNER, _LEASE_ID, _EXPIRES = _AT["lease_owner"], _AT["lease_id"], _AT["lease_expires_at"]
_FAILURE = _AT["failure"]
_NOT_BEFORE = _AT["not_before"]
_CANCEL_AT, _CANCEL_REASON = _AT["cancel_requested_at"], _AT["cancel_reason"]
_WAITING = _AT["waiting"]


def _due(not_before: datetime | None, now: datetime) -> bool:
    return not_before is None or not_before <= now


@dataclass(frozen=True, slots=True)
class _Signal:
    """One stored signal; the payload as JSON text (every read builds a fresh copy)."""

    seq: int
    name: str
    signal_id: str
    payload: str
    sent_at: datetime

    def signal(self) -> SagaSignal:
        return SagaSignal(
            self.seq, self.name, self.signal_id, loads_json(self.payload), self.sent_at
        )


@dataclass(slots=True)
class _Row:
    """One stored saga: its plain fields, its steps' plain fields, and the JSON rest."""

    fields: builtins.list[Any]
    steps: tuple[tuple[Any, ...], ...]
    payload: str

    @classmethod
    def of(cls, record: SagaRecord) -> _Row:
        """Take the parts of ``record`` a store can hold.

        Raises:
            SagaDataError: what ``encode_record`` would raise for ``record``.
        """
        steps = record.steps.values()
        fields = _plain_fields(record)
        step_fields = tuple(map(_step_fields, steps))
        try:
            payload = dumps_json(  # the user-filled parts are checked by record_is_plain
                (
                    record.data,
                    record.metadata,
                    record.error,
                    builtins.list(map(_step_json_fields, steps)),
                )
            )
            if not payload.isascii():  # O(1): ASCII, the common case, pays nothing
                payload.encode()  # UnicodeEncodeError on a lone surrogate
        except (TypeError, ValueError, RecursionError):
            raise rejected(record) from None
        failure = fields[_FAILURE]
        if not (record_is_plain(record) and (failure is None or _utf8_failure(failure))):
            raise rejected(record)
        return cls(builtins.list(fields), step_fields, payload)

    def record(self, saga_id: str) -> SagaRecord:
        """Build a fresh record from the stored parts.

        Raises:
            CorruptRecordError: the stored parts do not make a record (a test corrupted
                them: this store writes nothing else).
        """
        try:
            data, metadata, error, step_parts = loads_json(self.payload)
            steps = {}
            for fields, parts in zip(self.steps, step_parts, strict=True):
                step = SagaStepRecord(
                    **dict(zip(_STEP_PLAIN, fields, strict=True)),
                    **dict(zip(_STEP_JSON_FIELDS, parts, strict=True)),
                )
                steps[step.step_name] = step
        except (TypeError, ValueError):
            raise CorruptRecordError("stored payload is unreadable", saga_id=saga_id) from None
        return SagaRecord(
            **dict(zip(_PLAIN, self.fields, strict=True)),
            data=data,
            steps=steps,
            metadata=metadata,
            error=error,
        )


def _utf8_failure(failure: SagaFailure) -> bool:
    """Whether a failure's texts are valid UTF-8 (no lone surrogate), as JSON needs."""
    for text in (failure.step or "", failure.message):
        if not text.isascii():  # ASCII, the common case, is O(1)
            try:
                text.encode()
            except UnicodeEncodeError:
                return False
    return failure.cause is None or _utf8_failure(failure.cause)


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
        self._rows: dict[str, _Row] = {}
        self._signals: dict[str, builtins.list[_Signal]] = {}
        self._clock = clock
        self._sleepers: builtins.list[asyncio.Future[None]] = []  # wait_for_work() calls
        self.writes = 0
        """How many writes succeeded (saves, claims, releases): a cheap probe for tests."""

    async def save(self, record: SagaRecord) -> None:
        """Insert (version 0) or conditionally update ``record``; bump ``record.version``."""
        current = self._rows.get(record.saga_id)
        stored_version = 0 if current is None else current.fields[_VERSION]
        if stored_version != record.version:
            raise ConcurrencyConflictError(
                record.saga_id,
                expected_version=record.version,
                actual_version=None if current is None else stored_version,
            )
        row = _Row.of(record)
        fields = row.fields
        if current is not None:  # a cancel request is the store's: a save keeps it
            fields[_CANCEL_AT] = current.fields[_CANCEL_AT]
            fields[_CANCEL_REASON] = current.fields[_CANCEL_REASON]
        if (
            record.lease_owner is None
            and self._sleepers
            and not record.is_terminal
            and (record.waiting is None or _due(record.not_before, self._clock()))
        ):
            self._wake()  # enqueued or redriven: work no one holds
        fields[_VERSION] = record.version = stored_version + 1
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
        return self._select(saga_name, None, None)

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | None = None,
        limit: int = 100,
        waiting: bool | None = None,
    ) -> builtins.list[SagaRecord]:
        """Return up to ``limit`` readable sagas matching the filters, newest first.

        ``waiting=True`` keeps only parked sagas (``record.waiting`` set), ``False`` only
        the others.

        Unreadable rows are logged (``ERROR``, naming the saga) and skipped.

        Raises:
            TypeError: ``limit`` is not an int.
            ValueError: ``limit`` is negative or above ``config.MAX_LIST_LIMIT``.
        """
        return self._select(saga_name, status, check_list_limit(limit), waiting)

    def _select(
        self,
        saga_name: str | None,
        status: SagaStatus | None,
        limit: int | None,
        waiting: bool | None = None,  # noqa: FBT001 - private, positional like the rest
    ) -> builtins.list[SagaRecord]:
        found = [
            (row.fields[_CREATED] or EPOCH, saga_id)
            for saga_id, row in self._rows.items()
            if (saga_name is None or row.fields[_NAME] == saga_name)
            and (status is None or row.fields[_STATUS] == status)
            and (waiting is None or (row.fields[_WAITING] is not None) is waiting)
        ]
        found.sort(reverse=True)
        records: builtins.list[SagaRecord] = []
        for _, saga_id in found:
            if limit is not None and len(records) >= limit:
                break
            try:
                records.append(self._rows[saga_id].record(saga_id))
            except CorruptRecordError as exc:
                logger.error(  # noqa: TRY400 - no traceback needed
                    "list: skipping unreadable saga %s: %s",
                    saga_id,
                    exc,
                    extra=log_fields(saga_id=saga_id, saga_name=self._rows[saga_id].fields[_NAME]),
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
            (row.fields[_NOT_BEFORE] or row.fields[_CREATED] or EPOCH, key)
            for key in ids
            if (row := self._rows.get(key)) is not None
            and key not in passed_over
            and row.fields[_NAME] in names
            and is_claimable(
                row.fields[_STATUS],
                row.fields[_OWNER],
                row.fields[_LEASE_ID],
                row.fields[_EXPIRES],
                owner=owner,
                claimer_lease_id=lease_id,
                now=now,
                not_before=row.fields[_NOT_BEFORE],
                cancel_requested=row.fields[_CANCEL_AT] is not None,
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
                        saga_id=key, saga_name=self._rows[key].fields[_NAME], worker_id=owner
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
            self._rows[key].fields = builtins.list(_plain_fields(record))
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
                fields[_OWNER] != owner
                or fields[_LEASE_ID] != lease_id
                or fields[_STATUS] in TERMINAL_SAGA_STATUSES
            ):
                continue
            fields[_EXPIRES] = expires
            held.append(saga_id)
        return held

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Drop this worker's lease on a saga; return whether it held it."""
        row = self._rows.get(saga_id)
        if row is None or row.fields[_OWNER] != owner or row.fields[_LEASE_ID] != lease_id:
            return False
        fields = row.fields
        fields[_OWNER] = fields[_LEASE_ID] = fields[_EXPIRES] = None
        fields[_VERSION] += 1
        self.writes += 1
        self._wake()
        return True

    async def request_cancel(self, saga_id: str, reason: str) -> SagaRecord | None:
        """Store a cancel request on a live saga without one; return the saga's record."""
        row = self._rows.get(saga_id)
        if row is None:
            return None
        fields = row.fields
        if fields[_STATUS] not in TERMINAL_SAGA_STATUSES and fields[_CANCEL_AT] is None:
            fields[_CANCEL_AT] = self._clock()
            fields[_CANCEL_REASON] = reason
            self.writes += 1
            self._wake()
        return row.record(saga_id)

    async def cancel_requests(self, owner: str, lease_id: str) -> dict[str, str]:
        """The live sagas ``owner``/``lease_id`` holds that were asked to cancel."""
        return {
            saga_id: fields[_CANCEL_REASON] or ""
            for saga_id, row in self._rows.items()
            if (fields := row.fields)[_CANCEL_AT] is not None
            and fields[_OWNER] == owner
            and fields[_LEASE_ID] == lease_id
            and fields[_STATUS] not in TERMINAL_SAGA_STATUSES
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
            if row.fields[_STATUS] in TERMINAL_SAGA_STATUSES
            and row.fields[_COMPLETED] is not None
            and row.fields[_COMPLETED] < before
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
        if fields[_STATUS] in TERMINAL_SAGA_STATUSES:
            raise SagaFinishedError.for_signal(saga_id, fields[_STATUS], name)
        text = signal_payload_json(payload)
        now = self._clock()
        seq = signals[-1].seq + 1 if signals else 1
        self._signals.setdefault(saga_id, signals).append(_Signal(seq, name, signal_id, text, now))
        wait = fields[_WAITING]
        if fields[_OWNER] is None and wait is not None and wait.signal == name:
            fields[_NOT_BEFORE] = now  # parked for it: due now
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
        if fields[_OWNER] is not None or fields[_STATUS] in TERMINAL_SAGA_STATUSES:
            return False
        fields[_NOT_BEFORE] = self._clock()
        self._wake()
        return True

    async def close(self) -> None:
        """Nothing to release; kept for the protocol."""
