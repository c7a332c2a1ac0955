"""Helpers for testing your sagas: a fault-injecting store wrapper and a manual clock.

Example — crash a worker right after its second write, then recover in a "new process"::

    store = InMemorySagaStore()
    faulty = FaultyStore(store, crash_after_write=2)
    first = SagaManager(faulty, worker_id="worker-1")
    first.register(OrderSaga)
    saga_id = await first.start("orders", {...})
    ...  # the run dies with SimulatedCrash; nothing is released, as in a real crash
    second = SagaManager(store, worker_id="worker-1")  # same name: takes over at once
    second.register(OrderSaga)
    await second.recover()
    record = await second.wait(saga_id)
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from lexigram.events.sagas.errors import SagaStoreUnavailableError
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["FaultyStore", "ManualClock", "SimulatedCrash", "StoreWrapper"]


class SimulatedCrash(BaseException):
    """Raised by :class:`FaultyStore` to stand for the process dying at that instant.

    It derives from ``BaseException`` so that, like a real crash, no ``except Exception``
    in the engine or in your code handles it.
    """


class ManualClock:
    """A clock for ``SagaManager(clock=...)`` and ``InMemorySagaStore(clock=...)``.

    Calling it returns the current (fake) UTC time; ``advance`` moves it forward.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        """Return the current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += timedelta(seconds=seconds)


class StoreWrapper:
    """A store that passes every call through to ``inner``.

    Subclass it to observe or disturb some calls (as :class:`FaultyStore` does) and
    inherit the rest.
    """

    def __init__(self, inner: SagaStore) -> None:
        self.inner = inner

    async def save(self, record: SagaRecord) -> None:
        """Save through."""
        await self.inner.save(record)

    async def claim(
        self,
        owner: str,
        lease_id: str,
        *,
        lease_seconds: float,
        saga_names: Collection[str],
        limit: int = 100,
        saga_id: str | None = None,
    ) -> builtins.list[SagaRecord]:
        """Claim through."""
        return await self.inner.claim(
            owner,
            lease_id,
            lease_seconds=lease_seconds,
            saga_names=saga_names,
            limit=limit,
            saga_id=saga_id,
        )

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Release through."""
        return await self.inner.release(saga_id, owner, lease_id)

    async def load(self, saga_id: str) -> SagaRecord | None:
        """Read through."""
        return await self.inner.load(saga_id)

    async def list_by_name(self, saga_name: str) -> builtins.list[SagaRecord]:
        """Read through."""
        return await self.inner.list_by_name(saga_name)

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaRecord]:
        """Read through."""
        return await self.inner.list(saga_name=saga_name, status=status, limit=limit)

    async def delete(self, saga_id: str) -> bool:
        """Delete through."""
        return await self.inner.delete(saga_id)

    async def renew(
        self, owner: str, lease_id: str, saga_ids: Sequence[str], *, lease_seconds: float
    ) -> builtins.list[str]:
        """Renew through."""
        return await self.inner.renew(owner, lease_id, saga_ids, lease_seconds=lease_seconds)

    async def delete_terminal(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete through."""
        return await self.inner.delete_terminal(before=before, limit=limit)

    async def close(self) -> None:
        """Close the inner store."""
        await self.inner.close()


class FaultyStore(StoreWrapper):
    """Wraps a store and fails chosen writes, to test crashes and outages.

    Writes (``save``, ``claim``, ``release``) are numbered from 1 in the order they are
    attempted. Reads and ``renew`` pass through.

    Args:
        inner: The store that really keeps the data.
        crash_before_write: Raise :class:`SimulatedCrash` instead of performing this write.
        crash_after_write: Perform this write, then raise :class:`SimulatedCrash`.
        unavailable_writes: Raise ``SagaStoreUnavailableError`` instead of these writes.
        ambiguous_writes: Perform these writes, then raise ``SagaStoreUnavailableError``
            (the commit landed but the caller cannot know).
    """

    def __init__(
        self,
        inner: SagaStore,
        *,
        crash_before_write: int | None = None,
        crash_after_write: int | None = None,
        unavailable_writes: Iterable[int] = (),
        ambiguous_writes: Iterable[int] = (),
    ) -> None:
        super().__init__(inner)
        self.crash_before_write = crash_before_write
        self.crash_after_write = crash_after_write
        self.unavailable_writes = set(unavailable_writes)
        self.ambiguous_writes = set(ambiguous_writes)
        self.writes = 0
        """How many writes were attempted so far."""
        self.saved: builtins.list[tuple[str, int, SagaStatus]] = []
        """``(saga_id, version, status)`` of every save that reached the inner store."""

    def _before(self) -> int:
        self.writes += 1
        number = self.writes
        if number == self.crash_before_write:
            raise SimulatedCrash(f"simulated crash before write {number}")
        if number in self.unavailable_writes:
            raise SagaStoreUnavailableError(f"simulated outage at write {number}")
        return number

    def _after(self, number: int) -> None:
        if number in self.ambiguous_writes:
            raise SagaStoreUnavailableError(f"simulated lost reply after write {number}")
        if number == self.crash_after_write:
            raise SimulatedCrash(f"simulated crash after write {number}")

    async def save(self, record: SagaRecord) -> None:
        """Save through to the inner store, failing as configured."""
        number = self._before()
        await self.inner.save(record)
        self.saved.append((record.saga_id, record.version, record.status))
        self._after(number)

    async def claim(
        self,
        owner: str,
        lease_id: str,
        *,
        lease_seconds: float,
        saga_names: Collection[str],
        limit: int = 100,
        saga_id: str | None = None,
    ) -> builtins.list[SagaRecord]:
        """Claim through the inner store, failing as configured."""
        number = self._before()
        claimed = await super().claim(
            owner,
            lease_id,
            lease_seconds=lease_seconds,
            saga_names=saga_names,
            limit=limit,
            saga_id=saga_id,
        )
        self._after(number)
        return claimed

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Release through the inner store, failing as configured."""
        number = self._before()
        released = await self.inner.release(saga_id, owner, lease_id)
        self._after(number)
        return released
