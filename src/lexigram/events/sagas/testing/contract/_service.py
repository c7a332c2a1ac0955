"""Conformance: what workers serving a store rely on (SPEC section 11).

Due times (``not_before``), passing over ids, cancel requests from any process, the wake-up
of idle workers, and a redriven saga becoming claimable again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from lexigram.events.sagas import SagaRecord, SagaStatus, SagaStore
from lexigram.events.sagas.testing.contract._records import BASE_TIME, make_record


async def _claim(store: SagaStore, owner: str = "w1", lease_id: str = "l1") -> list[SagaRecord]:
    return await store.claim(owner, lease_id, lease_seconds=30, saga_names=["orders"])


def _later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


class ServiceContract:
    """``not_before``, ``exclude``, ``request_cancel``, ``cancel_requests``, ``wait_for_work``."""

    # ------------------------------------------------------------------ due times

    async def test_a_saga_not_yet_due_is_not_claimed(self, store: SagaStore) -> None:
        """An unowned saga whose ``not_before`` is ahead waits; one already due is taken."""
        later = make_record("later", status=SagaStatus.PENDING)
        later.not_before = _later()
        due = make_record("due", status=SagaStatus.PENDING)
        due.not_before = BASE_TIME
        await store.save(later)
        await store.save(due)
        claimed = await _claim(store)
        assert [r.saga_id for r in claimed] == ["due"]
        stored = await store.load("later")
        assert stored is not None
        assert stored.not_before == later.not_before
        assert stored.lease_owner is None

    async def test_claims_order_by_due_time_then_creation(self, store: SagaStore) -> None:
        """Oldest first means ``not_before`` when set, else ``created_at``."""
        early = make_record("a-created-early", created_at=BASE_TIME)
        early.not_before = BASE_TIME + timedelta(minutes=10)  # due after the other one
        plain = make_record("b-plain", created_at=BASE_TIME + timedelta(minutes=1))
        await store.save(early)
        await store.save(plain)
        claimed = await _claim(store)
        assert [r.saga_id for r in claimed] == ["b-plain", "a-created-early"]

    async def test_claim_passes_over_excluded_ids(self, store: SagaStore) -> None:
        """Ids in ``exclude`` are not claimed, and do not use up the limit."""
        for index in range(3):
            await store.save(make_record(f"s-{index}", created_at=BASE_TIME + timedelta(index)))
        claimed = await store.claim(
            "w1", "l1", lease_seconds=30, saga_names=["orders"], limit=1, exclude={"s-0"}
        )
        assert [r.saga_id for r in claimed] == ["s-1"]
        left = await store.load("s-0")
        assert left is not None
        assert left.lease_owner is None

    # ------------------------------------------------------------------ cancel requests

    async def test_request_cancel_is_stored_without_touching_the_holder(
        self, store: SagaStore
    ) -> None:
        """A request leaves version and lease alone: the holder's next save lands."""
        await store.save(make_record("s-1"))
        (held,) = await _claim(store)
        asked = await store.request_cancel("s-1", "customer changed their mind")
        assert asked is not None
        assert asked.cancel_requested_at is not None
        assert asked.cancel_reason == "customer changed their mind"
        assert (asked.version, asked.lease_owner, asked.lease_id) == (2, "w1", "l1")
        held.data["progress"] = 1
        await store.save(held)  # version 2 -> 3: no conflict
        stored = await store.load("s-1")
        assert stored is not None
        assert stored.data["progress"] == 1
        assert stored.cancel_reason == "customer changed their mind"  # the save kept it
        assert stored.cancel_requested_at == asked.cancel_requested_at

    async def test_the_first_cancel_request_wins(self, store: SagaStore) -> None:
        """A second request keeps the first one's time and reason."""
        await store.save(make_record("s-1"))
        first = await store.request_cancel("s-1", "first")
        second = await store.request_cancel("s-1", "second")
        assert first is not None
        assert second is not None
        assert (second.cancel_reason, second.cancel_requested_at) == (
            "first",
            first.cancel_requested_at,
        )

    async def test_request_cancel_of_a_terminal_or_unknown_saga(self, store: SagaStore) -> None:
        """A finished saga is left as it is; an unknown id gives ``None``."""
        await store.save(make_record("done", status=SagaStatus.COMPLETED))
        record = await store.request_cancel("done", "too late")
        assert record is not None
        assert record.status is SagaStatus.COMPLETED
        assert (record.cancel_requested_at, record.cancel_reason, record.version) == (
            None,
            None,
            1,
        )
        assert await store.request_cancel("nope", "x") is None

    async def test_cancel_requests_lists_what_the_holder_was_asked(self, store: SagaStore) -> None:
        """Only live sagas held by exactly that owner and lease id, with a request."""
        for saga_id in ("mine", "mine-too", "other", "free"):
            await store.save(make_record(saga_id))
        await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"], saga_id="mine")
        await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"], saga_id="mine-too")
        await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"], saga_id="other")
        assert await store.cancel_requests("w1", "l1") == {}
        for saga_id in ("mine", "other", "free"):
            await store.request_cancel(saga_id, f"stop {saga_id}")
        assert await store.cancel_requests("w1", "l1") == {"mine": "stop mine"}
        assert await store.cancel_requests("w1", "another-life") == {}
        assert await store.cancel_requests("w2", "l2") == {"other": "stop other"}

    async def test_a_free_saga_asked_to_cancel_is_claimed_with_its_request(
        self, store: SagaStore
    ) -> None:
        """A worker claiming a saga nobody held sees the request in the claimed record."""
        await store.save(make_record("s-1", status=SagaStatus.PENDING))
        await store.request_cancel("s-1", "no longer wanted")
        (claimed,) = await _claim(store)
        assert claimed.cancel_reason == "no longer wanted"
        assert claimed.cancel_requested_at is not None

    # ------------------------------------------------------------------ waking workers

    async def test_wait_for_work_times_out_when_nothing_happens(self, store: SagaStore) -> None:
        """With no new work, ``wait_for_work`` returns ``False`` after its timeout."""
        assert await asyncio.wait_for(store.wait_for_work(0.05), timeout=5) is False

    async def test_an_enqueued_saga_wakes_a_waiting_worker(self, store: SagaStore) -> None:
        """Storing a saga nobody holds wakes ``wait_for_work`` long before its timeout."""
        waiter = asyncio.ensure_future(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        await store.save(make_record("s-1", status=SagaStatus.PENDING))
        assert await asyncio.wait_for(waiter, timeout=5) is True

    async def test_a_cancel_request_wakes_a_waiting_worker(self, store: SagaStore) -> None:
        """A cancel request wakes ``wait_for_work`` (the holder stops at once)."""
        await store.save(make_record("s-1"))
        await _claim(store)
        waiter = asyncio.ensure_future(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        await store.request_cancel("s-1", "stop")
        assert await asyncio.wait_for(waiter, timeout=5) is True

    async def test_a_release_wakes_a_waiting_worker(self, store: SagaStore) -> None:
        """A released lease is work for someone: it wakes ``wait_for_work``."""
        await store.save(make_record("s-1"))
        await _claim(store)
        waiter = asyncio.ensure_future(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        assert await store.release("s-1", "w1", "l1")
        assert await asyncio.wait_for(waiter, timeout=5) is True

    # ------------------------------------------------------------------ redrive

    async def test_a_redriven_failed_saga_is_claimable_again(self, store: SagaStore) -> None:
        """Saving a ``FAILED`` saga back as ``COMPENSATING`` (``retry()``) makes it work."""
        await store.save(make_record("s-1", status=SagaStatus.FAILED))
        assert await _claim(store) == []
        record = await store.load("s-1")
        assert record is not None
        record.status = SagaStatus.COMPENSATING
        record.completed_at = None
        record.redrives += 1
        await store.save(record)
        (claimed,) = await _claim(store)
        assert (claimed.status, claimed.redrives) == (SagaStatus.COMPENSATING, 1)

    async def test_a_redriven_saga_wakes_a_waiting_worker(self, store: SagaStore) -> None:
        """A ``FAILED`` saga saved back without a lease (``retry()``) is work: it wakes."""
        await store.save(make_record("s-1", status=SagaStatus.FAILED))
        record = await store.load("s-1")
        assert record is not None
        waiter = asyncio.ensure_future(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        record.status = SagaStatus.COMPENSATING
        record.completed_at = None
        await store.save(record)
        assert await asyncio.wait_for(waiter, timeout=5) is True

    async def test_a_saga_scheduled_for_later_and_asked_to_cancel_is_claimable_now(
        self, store: SagaStore
    ) -> None:
        """A cancel must not wait for ``not_before``: the request makes the saga claimable."""
        later = make_record("later", status=SagaStatus.PENDING)
        later.not_before = _later()
        await store.save(later)
        assert await _claim(store) == []
        await store.request_cancel("later", "never mind")
        (claimed,) = await _claim(store)
        assert (claimed.saga_id, claimed.cancel_reason) == ("later", "never mind")
        one = make_record("one", status=SagaStatus.PENDING)
        one.not_before = _later()
        await store.save(one)
        await store.request_cancel("one", "x")
        taken = await store.claim(
            "w2", "l2", lease_seconds=30, saga_names=["orders"], saga_id="one"
        )
        assert [r.saga_id for r in taken] == ["one"]
