"""Conformance: saving and loading (versions, copies, fidelity of every field)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lexigram.events.sagas import ConcurrencyConflictError, SagaStatus, SagaStepRecord, SagaStore
from lexigram.events.sagas.testing.contract._records import (
    full_record,
    json_values,
    make_record,
    same_fields,
)


class SavingContract:
    """How ``save`` versions records and ``load`` gives back exact, detached copies."""

    # ------------------------------------------------------------------ versions

    async def test_insert_sets_version_one(self, store: SagaStore) -> None:
        """Saving a new record stores version 1 and updates the record."""
        record = make_record("s-1")
        await store.save(record)
        assert record.version == 1
        loaded = await store.load("s-1")
        assert loaded is not None
        assert loaded.version == 1

    async def test_each_save_raises_version_by_one(self, store: SagaStore) -> None:
        """Every successful save raises the stored version by exactly one."""
        record = make_record("s-1")
        for expected in range(1, 6):
            record.data["n"] = expected
            await store.save(record)
            assert record.version == expected
        loaded = await store.load("s-1")
        assert loaded is not None
        assert (loaded.version, loaded.data["n"]) == (5, 5)

    async def test_stale_save_conflicts_and_changes_nothing(self, store: SagaStore) -> None:
        """A save based on an old version raises and leaves the stored record as it was."""
        record = make_record("s-1")
        await store.save(record)
        stale = await store.load("s-1")
        assert stale is not None
        record.data["winner"] = "first"
        await store.save(record)
        stale.data["winner"] = "second"
        with pytest.raises(ConcurrencyConflictError) as caught:
            await store.save(stale)
        assert caught.value.saga_id == "s-1"
        assert caught.value.expected_version == 1
        assert caught.value.actual_version == 2
        assert stale.version == 1
        loaded = await store.load("s-1")
        assert loaded is not None
        assert loaded.data["winner"] == "first"

    async def test_inserting_an_existing_id_conflicts(self, store: SagaStore) -> None:
        """A version-0 save of an id that exists raises (idempotent start relies on it)."""
        await store.save(make_record("s-1", data={"first": True}))
        with pytest.raises(ConcurrencyConflictError):
            await store.save(make_record("s-1", data={"first": False}))
        loaded = await store.load("s-1")
        assert loaded is not None
        assert loaded.data == {"first": True}

    async def test_updating_a_missing_record_conflicts(self, store: SagaStore) -> None:
        """A save with version > 0 of an id that does not exist raises, naming no version."""
        record = make_record("ghost")
        record.version = 3
        with pytest.raises(ConcurrencyConflictError) as caught:
            await store.save(record)
        assert caught.value.actual_version is None
        assert await store.load("ghost") is None

    async def test_concurrent_saves_of_one_version_let_one_win(self, store: SagaStore) -> None:
        """Of many writers saving the same version at once, exactly one succeeds."""
        await store.save(make_record("s-1"))
        copies = [await store.load("s-1") for _ in range(8)]
        results = await asyncio.gather(
            *(store.save(copy) for copy in copies if copy is not None), return_exceptions=True
        )
        assert sum(1 for result in results if result is None) == 1
        assert all(
            isinstance(result, ConcurrencyConflictError) for result in results if result is not None
        )

    # ------------------------------------------------------------------ copies and fidelity

    async def test_load_missing_returns_none(self, store: SagaStore) -> None:
        """Loading an unknown id returns None."""
        assert await store.load("nope") is None

    async def test_loaded_record_is_a_copy(self, store: SagaStore) -> None:
        """Mutating a loaded record changes nothing stored."""
        await store.save(make_record("s-1"))
        loaded = await store.load("s-1")
        assert loaded is not None
        loaded.data["order_id"] = "changed"
        loaded.steps["x"] = SagaStepRecord("x")
        again = await store.load("s-1")
        assert again is not None
        assert again.data["order_id"] == "s-1"
        assert "x" not in again.steps

    async def test_save_keeps_no_reference(self, store: SagaStore) -> None:
        """Mutating a record after saving it changes nothing stored."""
        record = make_record("s-1")
        await store.save(record)
        record.data["order_id"] = "changed"
        record.status = SagaStatus.FAILED
        loaded = await store.load("s-1")
        assert loaded is not None
        assert loaded.data["order_id"] == "s-1"
        assert loaded.status is SagaStatus.RUNNING

    async def test_every_field_round_trips(self, store: SagaStore) -> None:
        """A record with every field set (unicode, big ints, steps, UTC times) round-trips."""
        record = full_record("s-1")
        await store.save(record)
        loaded = await store.load("s-1")
        assert loaded is not None
        assert same_fields(loaded, record)
        assert list(loaded.steps) == ["reserve", "charge"]
        assert loaded.created_at is not None
        assert loaded.created_at.tzinfo is not None
        assert loaded.created_at.utcoffset() == timedelta(0)

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
    async def test_generated_context_round_trips(
        self, store: SagaStore, data: dict[str, Any]
    ) -> None:
        """Any JSON object stored as context data loads back equal."""
        saga_id = f"gen-{id(data)}-{len(repr(data))}"
        await store.delete(saga_id)
        record = make_record(saga_id, data=data)
        await store.save(record)
        loaded = await store.load(saga_id)
        assert loaded is not None
        assert loaded.data == data
