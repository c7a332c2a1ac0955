"""The ``SagaStore`` port and ``InMemorySagaStore``.

A store keeps one record per saga and the lease that says which worker runs it. The engine
is the only writer of progress; workers coordinate through conditional writes:

- every write (``save``, ``claim``, ``release``) checks the stored ``version`` or lease and
  raises the version by exactly one;
- a worker that lost its lease finds its next ``save`` rejected with
  ``ConcurrencyConflictError``, so it can never overwrite the new owner's progress.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from lexigram.events.sagas._leases import is_claimable
from lexigram.events.sagas._memory import InMemorySagaStore
from lexigram.events.sagas.types import SagaRecord, SagaSignal, SagaStatus, SagaStepRecord

__all__ = [
    "InMemorySagaStore",
    "SagaRecord",
    "SagaStepRecord",
    "SagaStore",
    "is_claimable",
]


@runtime_checkable
class SagaStore(Protocol):
    """Where saga records live. Every method is a coroutine.

    Semantic contract, checked by the shared conformance suite
    (``lexigram.events.sagas.testing.contract``) that every implementation runs:

    - **Durability**: when ``save``, ``claim`` or ``release`` returns, the write survives a
      crash of this process (for durable stores) and is visible to every other worker.
    - **Versions**: ``save(record)`` succeeds only if the stored version equals
      ``record.version`` (``0`` means "must not exist yet"); it then stores the record with
      ``version + 1`` and sets ``record.version`` to it. Otherwise it raises
      ``ConcurrencyConflictError`` and changes nothing. ``claim`` and ``release`` also raise
      the version by one; ``renew`` does not.
    - **Copies**: ``load``/``list``/``claim`` return fresh objects; changing them changes
      nothing until saved. ``save`` does not keep a reference to its argument.
    - **JSON only**: records are stored as JSON; a value that cannot be stored raises
      ``SagaDataError`` naming its key, before anything is written.
    - **Leases**: a saga is claimable when it is not terminal, not held under the
      claimer's own ``lease_id``, and has no owner (and its ``not_before``, if any, has
      passed), its lease expired (by the store's clock where it has one), or it is owned
      by the same worker name under another ``lease_id`` (an earlier incarnation of a
      restarted worker).
    - **Signals** (``send_signal``, ``next_signal``, ``wake``): kept apart from the record
      (a signal may arrive while a worker holds the saga), deleted with it; ``save`` and
      ``claim`` keep ``not_before`` as written, except that ``send_signal`` and ``wake``
      may make a free saga due.
    - **Cancel requests**: ``cancel_requested_at``/``cancel_reason`` are written only by
      ``request_cancel``; ``save`` of an existing saga keeps the stored values (an insert
      stores the record's own), and every read returns them.
    - **Errors**: a store that cannot be reached raises ``SagaStoreUnavailableError``; a row
      that cannot be read raises ``CorruptRecordError`` naming the saga.
    """

    async def save(self, record: SagaRecord) -> None:
        """Insert (version 0) or conditionally update ``record``; bump ``record.version``."""
        ...

    async def load(self, saga_id: str) -> SagaRecord | None:
        """Return a copy of the saga's record, or ``None``."""
        ...

    async def list_by_name(self, saga_name: str) -> builtins.list[SagaRecord]:
        """Return every saga of ``saga_name``, newest first."""
        ...

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
        """Return up to ``limit`` sagas matching the filters, newest first.

        ``waiting=True`` keeps only sagas whose stored ``waiting`` is set (parked),
        ``waiting=False`` only the others; ``correlation_id`` the sagas whose
        ``record.correlation_id`` it is; ``created_after``/``created_before`` bound
        ``created_at`` (inclusive, exclusive). ``offset`` skips that many matches first
        (paging). Unreadable rows are skipped (and logged), never counted.

        Raises:
            TypeError, ValueError: ``limit`` or ``offset`` is not a count.
        """
        ...

    async def counts(self, *, saga_name: str | None = None) -> dict[str, int]:
        """Count the sagas (of ``saga_name``, or all) by status, and the parked ones.

        Returns:
            ``{status value: count}`` for every :class:`SagaStatus` (zeros included) and
            ``"waiting"``: the live sagas whose stored ``waiting`` is set.
        """
        ...

    async def delete(self, saga_id: str) -> bool:
        """Delete the saga; return whether it existed."""
        ...

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
        """Atomically take up to ``limit`` claimable sagas of ``saga_names``, oldest first.

        Each claimed record gets ``lease_owner=owner``, ``lease_id``, a lease ending
        ``lease_seconds`` from now, ``previous_owner`` set to the former owner, and
        ``recovery_attempts`` raised by one when it had an owner (a crashed worker's saga).
        With ``saga_id``, only that saga is considered; ids in ``exclude`` are passed over.

        Oldest first means by ``not_before`` when set, else ``created_at`` (then
        ``saga_id``). The cost of a claim does not grow with the number of finished sagas
        nor with the number held by live workers.
        """
        ...

    async def renew(
        self, owner: str, lease_id: str, saga_ids: Sequence[str], *, lease_seconds: float
    ) -> builtins.list[str]:
        """Extend the leases this worker still holds; return the ids it still holds."""
        ...

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Drop this worker's lease on a saga; return whether it held it."""
        ...

    async def request_cancel(self, saga_id: str, reason: str) -> SagaRecord | None:
        """Store a request to cancel the saga; return its record (``None``: no such saga).

        Sets ``cancel_requested_at`` (the store's now) and ``cancel_reason`` on a live saga
        without one; a saga already asked keeps the first request, a terminal saga is left
        as it is. Changes neither ``version`` nor the lease (the holder's writes go on), and
        wakes :meth:`wait_for_work` waiters in every process.
        """
        ...

    async def cancel_requests(self, owner: str, lease_id: str) -> dict[str, str]:
        """The live sagas ``owner``/``lease_id`` holds that were asked to cancel: id -> reason."""
        ...

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a sign of new work; return whether one came.

        Signs: a saga stored without a lease (``enqueue``), a lease released, a cancel
        request. Stores that cannot be told (SQLite across processes) may return early or
        late; callers claim after every return, so a missed sign only costs latency.
        """
        ...

    async def send_signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        """Store a signal for the saga; return ``False`` if ``signal_id`` was stored before.

        The signal gets the next ``seq`` of the saga's signals (``seq`` order is the order
        in which the sends committed) and the store's time as ``sent_at``. When the saga
        is free and its stored ``waiting`` is this signal, the saga becomes due at once
        (``not_before`` = now, waking :meth:`wait_for_work` waiters in every process).
        Changes neither ``version`` nor the lease. A duplicate ``signal_id`` is reported
        before the saga's status is looked at (a sender's retry after the saga finished is
        not an error).

        Raises:
            SagaNotFoundError: no such saga.
            SagaFinishedError: the saga is terminal.
            SagaDataError: the payload is not a JSON object a store can hold.
        """
        ...

    async def next_signal(self, saga_id: str, name: str, after: int) -> SagaSignal | None:
        """Return the saga's first signal ``name`` whose ``seq`` is above ``after``."""
        ...

    async def wake(self, saga_id: str) -> bool:
        """Make a free, live saga due now (``not_before`` = now); return whether it was.

        Changes neither ``version`` nor the lease; wakes :meth:`wait_for_work` waiters.
        """
        ...

    async def delete_terminal(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` terminal sagas completed before ``before``; return how many."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""
        ...
