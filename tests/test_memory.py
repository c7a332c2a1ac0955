"""InMemorySagaStore runs the store conformance suite, plus what is special about it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from lexigram.events.sagas import InMemorySagaStore, SagaStore
from lexigram.events.sagas._leases import is_claimable
from lexigram.events.sagas._logging import LOG_FIELDS
from lexigram.events.sagas._memory_rows import EXPIRES as _EXPIRES
from lexigram.events.sagas._memory_rows import Row as _Row
from lexigram.events.sagas.testing.contract import (
    BASE_TIME,
    CorruptRow,
    ExpireLeases,
    Fault,
    StoreContract,
    make_record,
)
from lexigram.events.sagas.types import SagaStatus


@pytest.fixture
async def store() -> AsyncIterator[SagaStore]:
    memory = InMemorySagaStore()
    yield memory
    await memory.close()


@pytest.fixture
def expire_leases() -> ExpireLeases:
    async def expire(store: SagaStore, saga_ids: list[str]) -> None:
        assert isinstance(store, InMemorySagaStore)
        past = datetime.now(UTC) - timedelta(seconds=1)
        for saga_id in saga_ids:
            store._rows[saga_id].fields[_EXPIRES] = past

    return expire


@pytest.fixture
def corrupt_row() -> CorruptRow:
    async def corrupt(store: SagaStore, saga_id: str, *, fault: Fault = "garbage") -> None:
        # No columns apart from the payload: every fault is stored as a garbage payload.
        assert isinstance(store, InMemorySagaStore)
        row = _Row.of(make_record(saga_id))
        row.payload = "{not json"
        store._rows[saga_id] = row

    return corrupt


class TestInMemoryStore(StoreContract):
    """The conformance suite on the in-memory store."""


def test_store_satisfies_protocol() -> None:
    """InMemorySagaStore is a SagaStore."""
    assert isinstance(InMemorySagaStore(), SagaStore)


async def test_injected_clock_judges_leases() -> None:
    """Lease expiry follows the store's clock."""
    now = [BASE_TIME]
    store = InMemorySagaStore(clock=lambda: now[0])
    await store.save(make_record("s-1"))
    await store.claim("w1", "l1", lease_seconds=10, saga_names=["orders"])
    assert await store.claim("w2", "l2", lease_seconds=10, saga_names=["orders"]) == []
    now[0] += timedelta(seconds=11)
    assert len(await store.claim("w2", "l2", lease_seconds=10, saga_names=["orders"])) == 1


def test_claim_rule() -> None:
    """The claim rule: free, expired, or own earlier incarnation; never terminal."""
    now = BASE_TIME
    later = now + timedelta(seconds=5)
    rule = is_claimable
    assert rule(SagaStatus.RUNNING, None, None, None, owner="w", claimer_lease_id="l", now=now)
    assert rule(SagaStatus.RUNNING, "x", "y", now, owner="w", claimer_lease_id="l", now=now)
    assert not rule(SagaStatus.RUNNING, "x", "y", later, owner="w", claimer_lease_id="l", now=now)
    assert rule(SagaStatus.RUNNING, "w", "old", later, owner="w", claimer_lease_id="l", now=now)
    assert not rule(SagaStatus.RUNNING, "w", "l", later, owner="w", claimer_lease_id="l", now=now)
    assert not rule(
        SagaStatus.COMPLETED, None, None, None, owner="w", claimer_lease_id="l", now=now
    )


async def test_skipped_rows_are_logged_with_the_structured_fields(
    store: SagaStore, corrupt_row: CorruptRow, caplog: pytest.LogCaptureFixture
) -> None:
    """The records logged for an unreadable row carry the five log fields, naming the saga."""
    await corrupt_row(store, "bad-1")
    with caplog.at_level(logging.ERROR, logger="lexigram.events.sagas"):
        assert await store.list() == []
        assert await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"]) == []
    listed, claimed = (
        {name: vars(record)[name] for name in LOG_FIELDS} for record in caplog.records
    )
    expected = {"saga_id": "bad-1", "saga_name": "orders", "step": None, "attempt": None}
    assert listed == {**expected, "worker_id": None}
    assert claimed == {**expected, "worker_id": "w1"}
