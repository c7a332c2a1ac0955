"""Conformance: what operators' tools read (SPEC section 12).

Listing by correlation id and creation time, paging with ``offset``, and counts by status
(with the parked sagas), for the ``lexigram-sagas`` command and the web admin.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from lexigram.events.sagas import SagaStatus, SagaStore
from lexigram.events.sagas.testing.contract._records import BASE_TIME, make_record
from lexigram.events.sagas.testing.contract._signals import parked


class OperationsContract:
    """``list`` filters for operators, paging, and ``counts``."""

    async def test_list_by_correlation_id(self, store: SagaStore) -> None:
        """``correlation_id`` keeps the sagas whose ``record.correlation_id`` it is."""
        first = make_record("a-1", created_at=BASE_TIME)
        first.metadata["correlation_id"] = "order-7"
        second = make_record("a-2", created_at=BASE_TIME + timedelta(seconds=1))
        second.metadata["correlation_id"] = "order-7"
        other = make_record("b-1")
        other.metadata["correlation_id"] = "order-8"
        for record in (first, second, other):
            await store.save(record)
        found = await store.list(correlation_id="order-7")
        assert [r.saga_id for r in found] == ["a-2", "a-1"]
        assert await store.list(correlation_id="nothing") == []

    async def test_a_saga_without_a_correlation_id_is_its_own(self, store: SagaStore) -> None:
        """A saga with no ``correlation_id`` in its metadata is found by its saga id."""
        record = make_record("solo")
        record.metadata = {}
        await store.save(record)
        assert [r.saga_id for r in await store.list(correlation_id="solo")] == ["solo"]

    async def test_list_by_creation_time(self, store: SagaStore) -> None:
        """``created_after`` is inclusive, ``created_before`` exclusive."""
        for index in range(4):
            await store.save(
                make_record(f"t-{index}", created_at=BASE_TIME + timedelta(hours=index))
            )
        window = await store.list(
            created_after=BASE_TIME + timedelta(hours=1),
            created_before=BASE_TIME + timedelta(hours=3),
        )
        assert [r.saga_id for r in window] == ["t-2", "t-1"]
        assert len(await store.list(created_after=BASE_TIME + timedelta(days=1))) == 0

    async def test_offset_pages_through_the_list(self, store: SagaStore) -> None:
        """Pages of ``limit`` after ``offset`` matches cover the list once, newest first."""
        for index in range(7):
            await store.save(make_record(f"p-{index}", created_at=BASE_TIME + timedelta(index)))
        pages = [
            [r.saga_id for r in await store.list(limit=3, offset=offset)] for offset in (0, 3, 6)
        ]
        assert pages == [["p-6", "p-5", "p-4"], ["p-3", "p-2", "p-1"], ["p-0"]]
        assert await store.list(offset=7) == []
        named = await store.list(saga_name="orders", status=SagaStatus.RUNNING, offset=5)
        assert [r.saga_id for r in named] == ["p-1", "p-0"]

    @pytest.mark.parametrize(("offset", "error"), [(-1, ValueError), ("1", TypeError)])
    async def test_offset_must_be_a_count(
        self, store: SagaStore, offset: Any, error: type[Exception]
    ) -> None:
        """A negative offset is a ``ValueError``, a non-int one a ``TypeError``."""
        with pytest.raises(error, match="offset"):
            await store.list(offset=offset)

    async def test_counts_by_status_and_parked(self, store: SagaStore) -> None:
        """Every status is counted (zeros too), and the parked live sagas."""
        await store.save(make_record("r-1"))
        await store.save(make_record("r-2", saga_name="payments"))
        await store.save(make_record("c-1", status=SagaStatus.COMPLETED))
        await store.save(parked("w-1"))
        counts = await store.counts()
        assert counts == {
            "pending": 0,
            "running": 3,
            "completed": 1,
            "compensating": 0,
            "compensated": 0,
            "failed": 0,
            "waiting": 1,
        }
        orders = await store.counts(saga_name="orders")
        assert (orders["running"], orders["completed"], orders["waiting"]) == (2, 1, 1)
        assert (await store.counts(saga_name="nothing"))["running"] == 0
