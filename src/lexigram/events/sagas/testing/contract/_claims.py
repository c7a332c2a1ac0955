"""Conformance: claims and leases (takeovers, limits, races, renewals, releases)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from lexigram.events.sagas import ConcurrencyConflictError, SagaStatus, SagaStore
from lexigram.events.sagas.testing.contract._records import BASE_TIME, ExpireLeases, make_record


class ClaimContract:
    """``claim``, ``renew`` and ``release``: who holds a saga, and for how long."""

    async def test_claim_takes_unowned_sagas(self, store: SagaStore) -> None:
        """claim() takes a saga nobody holds, stamps the lease and bumps the version."""
        await store.save(make_record("s-1"))
        claimed = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
        assert len(claimed) == 1
        record = claimed[0]
        assert (record.lease_owner, record.lease_id, record.version) == ("w1", "l1", 2)
        assert record.previous_owner is None
        assert record.recovery_attempts == 0
        assert record.lease_expires_at is not None
        assert record.lease_expires_at > datetime.now(UTC) + timedelta(seconds=20)
        stored = await store.load("s-1")
        assert stored is not None
        assert (stored.lease_owner, stored.version) == ("w1", 2)

    async def test_claim_of_crashed_workers_saga_counts_a_recovery(
        self, store: SagaStore, expire_leases: ExpireLeases
    ) -> None:
        """Taking over an expired lease records the previous owner and counts the takeover."""
        await store.save(make_record("s-1", owner="dead", lease_id="x", lease_expires_at=BASE_TIME))
        await expire_leases(store, ["s-1"])
        claimed = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
        assert [(r.previous_owner, r.recovery_attempts) for r in claimed] == [("dead", 1)]

    async def test_claim_skips_live_leases(self, store: SagaStore) -> None:
        """A saga another worker holds under a live lease is not claimed."""
        await store.save(make_record("s-1"))
        assert len(await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])) == 1
        assert await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"]) == []
        assert await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"]) == []

    async def test_claim_takes_expired_leases(
        self, store: SagaStore, expire_leases: ExpireLeases
    ) -> None:
        """Once a lease has expired, another worker can take the saga over."""
        await store.save(make_record("s-1"))
        await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
        await expire_leases(store, ["s-1"])
        claimed = await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"])
        assert [(r.lease_owner, r.previous_owner) for r in claimed] == [("w2", "w1")]

    async def test_claim_takes_sagas_of_an_earlier_incarnation(self, store: SagaStore) -> None:
        """A worker restarted under the same name takes its old leases at once."""
        await store.save(make_record("s-1"))
        await store.claim("w1", "old-life", lease_seconds=30, saga_names=["orders"])
        claimed = await store.claim("w1", "new-life", lease_seconds=30, saga_names=["orders"])
        assert [(r.lease_id, r.recovery_attempts) for r in claimed] == [("new-life", 1)]

    async def test_claim_filters_names_and_skips_terminal(self, store: SagaStore) -> None:
        """claim() only takes non-terminal sagas of the given names."""
        await store.save(make_record("a", saga_name="orders"))
        await store.save(make_record("b", saga_name="other"))
        await store.save(make_record("c", saga_name="orders", status=SagaStatus.COMPLETED))
        await store.save(make_record("d", saga_name="orders", status=SagaStatus.PENDING))
        await store.save(make_record("e", saga_name="orders", status=SagaStatus.COMPENSATING))
        claimed = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
        assert sorted(r.saga_id for r in claimed) == ["a", "d", "e"]
        assert await store.claim("w1", "l2", lease_seconds=30, saga_names=[]) == []

    async def test_claim_limit_takes_oldest_first(self, store: SagaStore) -> None:
        """claim() takes at most ``limit`` sagas, oldest first."""
        for index in range(5):
            await store.save(make_record(f"s-{index}", created_at=BASE_TIME + timedelta(index)))
        first = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"], limit=2)
        assert [r.saga_id for r in first] == ["s-0", "s-1"]
        rest = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"], limit=10)
        assert [r.saga_id for r in rest] == ["s-2", "s-3", "s-4"]

    async def test_claim_one_saga_by_id(self, store: SagaStore) -> None:
        """claim(saga_id=...) considers only that saga."""
        await store.save(make_record("a"))
        await store.save(make_record("b"))
        claimed = await store.claim(
            "w1", "l1", lease_seconds=30, saga_names=["orders"], saga_id="b"
        )
        assert [r.saga_id for r in claimed] == ["b"]
        assert (
            await store.claim(
                "w1", "l1", lease_seconds=30, saga_names=["orders"], saga_id="missing"
            )
            == []
        )

    async def test_concurrent_claimers_never_share_a_saga(self, store: SagaStore) -> None:
        """Claimers racing over the same sagas each get a disjoint set, covering all."""
        for index in range(40):
            await store.save(make_record(f"s-{index:02}"))
        results = await asyncio.gather(
            *(
                store.claim(f"w{n}", f"l{n}", lease_seconds=30, saga_names=["orders"], limit=7)
                for n in range(8)
            )
        )
        ids = [record.saga_id for batch in results for record in batch]
        assert len(ids) == len(set(ids))
        assert len(ids) == 40

    async def test_renew_extends_only_own_leases(
        self, store: SagaStore, expire_leases: ExpireLeases
    ) -> None:
        """renew() keeps this worker's leases alive and reports which it still holds."""
        await store.save(make_record("mine"))
        await store.save(make_record("theirs"))
        await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"], saga_id="mine")
        await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"], saga_id="theirs")
        await expire_leases(store, ["mine"])
        held = await store.renew("w1", "l1", ["mine", "theirs", "missing"], lease_seconds=30)
        assert held == ["mine"]
        assert await store.claim("w3", "l3", lease_seconds=30, saga_names=["orders"]) == []
        loaded = await store.load("mine")
        assert loaded is not None
        assert loaded.version == 2  # renewing is not a save

    async def test_release_frees_the_saga(self, store: SagaStore) -> None:
        """release() drops the lease (owner only); the next claim is not a crash takeover."""
        await store.save(make_record("s-1"))
        await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
        assert await store.release("s-1", "w2", "l2") is False
        assert await store.release("s-1", "w1", "l1") is True
        released = await store.load("s-1")
        assert released is not None
        assert (released.lease_owner, released.version) == (None, 3)
        claimed = await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"])
        assert [(r.previous_owner, r.recovery_attempts) for r in claimed] == [(None, 0)]

    async def test_zombie_writer_is_rejected_after_takeover(
        self, store: SagaStore, expire_leases: ExpireLeases
    ) -> None:
        """A worker whose lease was taken over cannot save its stale record."""
        await store.save(make_record("s-1"))
        [zombie] = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
        await expire_leases(store, ["s-1"])
        [fresh] = await store.claim("w2", "l2", lease_seconds=30, saga_names=["orders"])
        zombie.data["step"] = "zombie"
        with pytest.raises(ConcurrencyConflictError):
            await store.save(zombie)
        fresh.data["step"] = "fresh"
        await store.save(fresh)
        loaded = await store.load("s-1")
        assert loaded is not None
        assert (loaded.data["step"], loaded.lease_owner) == ("fresh", "w2")
