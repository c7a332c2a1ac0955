"""The testing helpers: StoreWrapper and its hook, FaultyStore, ManualClock and NoWaits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from lexigram.events.sagas import (
    InMemorySagaStore,
    SagaStatus,
    SagaStore,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas._memory_rows import EXPIRES as _EXPIRES
from lexigram.events.sagas._memory_rows import Row as _Row
from lexigram.events.sagas.testing import (
    FaultyStore,
    ManualClock,
    NoWaits,
    SimulatedCrash,
    StoreCall,
    StoreWrapper,
)
from lexigram.events.sagas.testing.contract import (
    BASE_TIME,
    CorruptRow,
    ExpireLeases,
    StoreContract,
    make_record,
)

T = TypeVar("T")


class Recording(StoreWrapper):
    """Notes every call it forwards."""

    def __init__(self, inner: SagaStore) -> None:
        super().__init__(inner)
        self.calls: list[StoreCall[object]] = []

    async def forward(self, call: StoreCall[T]) -> T:
        self.calls.append(call)
        return await super().forward(call)


def memory_of(store: SagaStore) -> InMemorySagaStore:
    """The in-memory store inside a wrapper."""
    assert isinstance(store, StoreWrapper)
    assert isinstance(store.inner, InMemorySagaStore)
    return store.inner


# --------------------------------------------------------------------------- StoreWrapper


@pytest.fixture
async def store() -> AsyncIterator[SagaStore]:
    wrapped = StoreWrapper(InMemorySagaStore())
    yield wrapped
    await wrapped.close()


@pytest.fixture
def expire_leases() -> ExpireLeases:
    async def expire(store: SagaStore, saga_ids: list[str]) -> None:
        past = datetime.now(UTC) - timedelta(seconds=1)
        for saga_id in saga_ids:
            memory_of(store)._rows[saga_id].fields[_EXPIRES] = past

    return expire


@pytest.fixture
def corrupt_row() -> CorruptRow:
    async def corrupt(store: SagaStore, saga_id: str, **options: object) -> None:
        row = _Row.of(make_record(saga_id))
        row.payload = "{not json"
        memory_of(store)._rows[saga_id] = row

    return corrupt


class TestStoreWrapper(StoreContract):
    """A bare StoreWrapper around the in-memory store passes the conformance suite."""


def test_wrapper_is_a_saga_store() -> None:
    """``isinstance(StoreWrapper(...), SagaStore)`` holds at run time."""
    assert isinstance(StoreWrapper(InMemorySagaStore()), SagaStore)


async def test_every_method_goes_through_forward() -> None:
    """Each SagaStore method reaches ``forward`` once, named, with its arguments by name."""
    wrapper = Recording(InMemorySagaStore())
    record = make_record("s-1")
    await wrapper.save(record)
    await wrapper.load("s-1")
    await wrapper.list_by_name("orders")
    await wrapper.list(status=SagaStatus.RUNNING, limit=5)
    await wrapper.claim("w", "l", lease_seconds=30, saga_names=["orders"], saga_id="s-1")
    await wrapper.renew("w", "l", ["s-1"], lease_seconds=30)
    await wrapper.release("s-1", "w", "l")
    await wrapper.request_cancel("s-1", "why")
    await wrapper.cancel_requests("w", "l")
    await wrapper.wait_for_work(0.01)
    await wrapper.delete_terminal(before=BASE_TIME, limit=7)
    await wrapper.delete("s-1")
    await wrapper.close()
    assert [call.method for call in wrapper.calls] == [
        "save",
        "load",
        "list_by_name",
        "list",
        "claim",
        "renew",
        "release",
        "request_cancel",
        "cancel_requests",
        "wait_for_work",
        "delete_terminal",
        "delete",
        "close",
    ]
    by_method = {call.method: dict(call.arguments) for call in wrapper.calls}
    assert by_method["save"] == {"record": record}
    assert by_method["list"] == {"saga_name": None, "status": SagaStatus.RUNNING, "limit": 5}
    assert by_method["claim"] == {
        "owner": "w",
        "lease_id": "l",
        "lease_seconds": 30,
        "saga_names": ["orders"],
        "limit": 100,
        "exclude": (),
        "saga_id": "s-1",
    }
    assert by_method["release"] == {"saga_id": "s-1", "owner": "w", "lease_id": "l"}


async def test_forward_returns_what_the_inner_store_returns() -> None:
    """Results come back unchanged through the hook."""
    wrapper = Recording(InMemorySagaStore())
    await wrapper.save(make_record("s-1"))
    claimed = await wrapper.claim("w", "l", lease_seconds=30, saga_names=["orders"])
    assert [record.saga_id for record in claimed] == ["s-1"]
    assert await wrapper.release("s-1", "w", "l") is True
    assert await wrapper.delete("missing") is False


async def test_send_calls_a_store_in_the_shape_of_the_port() -> None:
    """``send`` passes positional parameters by position, keyword-only ones by keyword."""

    class Renamed(InMemorySagaStore):
        """A store whose positional parameters have other names than the port's."""

        async def release(self, sid: str, who: str, lease: str) -> bool:
            return await super().release(sid, who, lease)

    inner = Renamed()
    await inner.save(make_record("s-1"))
    await inner.claim("w", "l", lease_seconds=30, saga_names=["orders"])
    assert await StoreWrapper(inner).release("s-1", "w", "l") is True


def test_only_save_claim_and_release_are_writes() -> None:
    """``is_write`` marks the writes that raise a version, not renew or the deletes."""
    writes = {"save", "claim", "release"}
    for method in ("save", "load", "claim", "renew", "release", "delete", "delete_terminal"):
        assert StoreCall(method, {}).is_write is (method in writes)


# --------------------------------------------------------------------------- FaultyStore


async def test_writes_are_numbered_and_reads_are_not() -> None:
    """``save``, ``claim`` and ``release`` count as writes; reads and ``renew`` do not."""
    faulty = FaultyStore(InMemorySagaStore())
    await faulty.save(make_record("s-1"))
    await faulty.load("s-1")
    await faulty.list()
    await faulty.claim("w", "l", lease_seconds=30, saga_names=["orders"])
    await faulty.renew("w", "l", ["s-1"], lease_seconds=30)
    await faulty.release("s-1", "w", "l")
    assert faulty.writes == 3


async def test_crash_before_a_write_stores_nothing() -> None:
    """``crash_before_write`` raises SimulatedCrash and leaves the store untouched."""
    inner = InMemorySagaStore()
    faulty = FaultyStore(inner, crash_before_write=1)
    with pytest.raises(SimulatedCrash):
        await faulty.save(make_record("s-1"))
    assert await inner.load("s-1") is None
    assert faulty.saved == []


async def test_crash_after_a_write_keeps_it() -> None:
    """``crash_after_write`` performs the write, notes it, then raises SimulatedCrash."""
    inner = InMemorySagaStore()
    faulty = FaultyStore(inner, crash_after_write=1)
    with pytest.raises(SimulatedCrash):
        await faulty.save(make_record("s-1"))
    assert await inner.load("s-1") is not None
    assert faulty.saved == [("s-1", 1, SagaStatus.RUNNING)]


async def test_unavailable_write_is_not_performed() -> None:
    """``unavailable_writes`` raise SagaStoreUnavailableError instead of writing."""
    inner = InMemorySagaStore()
    faulty = FaultyStore(inner, unavailable_writes={2})
    await faulty.save(make_record("s-1"))
    with pytest.raises(SagaStoreUnavailableError):
        await faulty.claim("w", "l", lease_seconds=30, saga_names=["orders"])
    stored = await inner.load("s-1")
    assert stored is not None
    assert stored.lease_owner is None


async def test_ambiguous_write_lands_and_then_raises() -> None:
    """``ambiguous_writes`` perform the write, then raise SagaStoreUnavailableError."""
    inner = InMemorySagaStore()
    faulty = FaultyStore(inner, ambiguous_writes={1})
    with pytest.raises(SagaStoreUnavailableError):
        await faulty.save(make_record("s-1"))
    assert await inner.load("s-1") is not None
    assert faulty.saved == [("s-1", 1, SagaStatus.RUNNING)]


# --------------------------------------------------------------------------- ManualClock


def test_manual_clock_moves_only_when_advanced() -> None:
    """The clock returns its start time until ``advance`` moves it."""
    clock = ManualClock(BASE_TIME)
    assert clock() == BASE_TIME
    clock.advance(1.5)
    assert clock() == BASE_TIME + timedelta(seconds=1.5)


# --------------------------------------------------------------------------- NoWaits


async def test_no_waits_records_each_delay() -> None:
    """Every requested delay is kept, in order, as a float."""
    no_waits = NoWaits()
    await no_waits(1)
    await no_waits(0.5)
    await no_waits(0)
    assert no_waits.delays == [1.0, 0.5, 0.0]
    assert all(isinstance(delay, float) for delay in no_waits.delays)


async def test_no_waits_total_is_the_sum_of_the_delays() -> None:
    """``total`` is what real sleeps would have taken; 0 before any call."""
    no_waits = NoWaits()
    assert no_waits.total == 0
    await no_waits(1.0)
    await no_waits(2.5)
    assert no_waits.total == 3.5


async def test_no_waits_does_not_wait() -> None:
    """An hour's delay returns at once (by the loop's clock)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await NoWaits()(3600)
    assert loop.time() - started < 1


async def test_no_waits_yields_to_the_loop_once() -> None:
    """A task scheduled before the call runs during it, as around a real sleep."""
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await NoWaits()(10)
    assert ran == ["other"]
    await task


async def test_no_waits_can_be_cancelled() -> None:
    """Cancelling a task inside ``NoWaits`` raises CancelledError there, as with a sleep."""
    no_waits = NoWaits()
    task = asyncio.create_task(no_waits(10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert no_waits.delays == [10.0]
