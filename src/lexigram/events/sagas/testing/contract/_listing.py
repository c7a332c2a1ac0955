"""Conformance: listing (filters, order, limits) and deleting."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from lexigram.events.sagas import SagaStatus, SagaStore
from lexigram.events.sagas.testing.contract._records import BASE_TIME, make_record


class ListingContract:
    """``list``, ``list_by_name``, ``delete`` and ``delete_terminal``."""

    async def test_list_filters_and_orders_newest_first(self, store: SagaStore) -> None:
        """list() filters by name and status, newest first, up to limit."""
        for index in range(5):
            await store.save(
                make_record(
                    f"o-{index}",
                    created_at=BASE_TIME + timedelta(seconds=index),
                    status=SagaStatus.COMPLETED if index % 2 else SagaStatus.RUNNING,
                )
            )
        await store.save(make_record("p-0", saga_name="payments"))
        orders = await store.list(saga_name="orders")
        assert [r.saga_id for r in orders] == ["o-4", "o-3", "o-2", "o-1", "o-0"]
        running = await store.list(saga_name="orders", status=SagaStatus.RUNNING, limit=2)
        assert [r.saga_id for r in running] == ["o-4", "o-2"]
        assert len(await store.list()) == 6
        assert [r.saga_id for r in await store.list(limit=1)] == ["o-4"]

    @pytest.mark.parametrize("limit", ["x", True, 2.5, None])
    async def test_list_limit_must_be_an_int(self, store: SagaStore, limit: Any) -> None:
        """A limit that is not an int raises TypeError naming ``limit``."""
        with pytest.raises(TypeError, match="limit"):
            await store.list(limit=limit)

    async def test_list_limit_must_not_be_negative(self, store: SagaStore) -> None:
        """A negative limit raises ValueError naming ``limit``; zero lists nothing."""
        await store.save(make_record("s-1"))
        with pytest.raises(ValueError, match="limit"):
            await store.list(limit=-1)
        assert await store.list(limit=0) == []

    async def test_list_by_name(self, store: SagaStore) -> None:
        """list_by_name() returns every saga of that name."""
        await store.save(make_record("a", saga_name="orders"))
        await store.save(make_record("b", saga_name="payments"))
        assert [r.saga_id for r in await store.list_by_name("payments")] == ["b"]
        assert await store.list_by_name("nothing") == []

    async def test_delete(self, store: SagaStore) -> None:
        """delete() removes a saga and says whether it existed."""
        await store.save(make_record("s-1"))
        assert await store.delete("s-1") is True
        assert await store.delete("s-1") is False
        assert await store.load("s-1") is None

    async def test_delete_terminal_spares_recent_and_running(self, store: SagaStore) -> None:
        """delete_terminal() removes only terminal sagas completed before the cutoff."""
        old = BASE_TIME
        await store.save(make_record("old-done", status=SagaStatus.COMPLETED, created_at=old))
        await store.save(make_record("old-failed", status=SagaStatus.FAILED, created_at=old))
        await store.save(make_record("old-running", status=SagaStatus.RUNNING, created_at=old))
        recent = BASE_TIME + timedelta(days=2)
        await store.save(make_record("new-done", status=SagaStatus.COMPLETED, created_at=recent))
        deleted = await store.delete_terminal(before=BASE_TIME + timedelta(days=1))
        assert deleted == 2
        remaining = {r.saga_id for r in await store.list()}
        assert remaining == {"old-running", "new-done"}

    async def test_delete_terminal_honours_limit(self, store: SagaStore) -> None:
        """delete_terminal() deletes at most ``limit`` sagas per call."""
        for index in range(5):
            await store.save(make_record(f"d-{index}", status=SagaStatus.COMPLETED))
        cutoff = BASE_TIME + timedelta(days=1)
        assert await store.delete_terminal(before=cutoff, limit=3) == 3
        assert await store.delete_terminal(before=cutoff, limit=3) == 2
