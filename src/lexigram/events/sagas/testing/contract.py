"""The store conformance suite: every ``SagaStore`` implementation runs these tests.

A test module subclasses :class:`StoreContract` and provides three fixtures:

- ``store``: a fresh, empty store (closed after the test);
- ``expire_leases``: ``async (store, saga_ids) -> None`` making those sagas' leases expired
  by the store's own judge of time;
- ``corrupt_row``: ``async (store, saga_id, *, fault="garbage") -> None`` storing, under
  ``saga_id``, a row of the saga name ``"orders"``, status ``running``, no lease and
  ``created_at`` :data:`BASE_TIME`, that cannot be read as a saga (see :class:`CorruptRow`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lexigram.events.sagas import (
    ConcurrencyConflictError,
    CorruptRecordError,
    SagaDataError,
    SagaRecord,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
    SagaStore,
)
from lexigram.events.sagas.errors import Rejection

ExpireLeases = Callable[[SagaStore, list[str]], Awaitable[None]]

Fault = Literal["garbage", "foreign_name", "foreign_id"]
"""How a row made by the ``corrupt_row`` fixture is unreadable.

- ``"garbage"``: its document is not a saga record (not JSON, or JSON of another shape);
- ``"foreign_name"``: a valid document of a saga named ``"other"`` in a row whose indexed
  name is ``"orders"`` (a row edited by hand, or copied from another table);
- ``"foreign_id"``: a valid document of another saga id than the row's key.

A store that keeps no separate columns or key (the in-memory store) cannot hold the last
two; its fixture stores a ``"garbage"`` row for them.
"""


class CorruptRow(Protocol):
    """The ``corrupt_row`` fixture: store an unreadable row under ``saga_id``.

    The row has the saga name ``"orders"``, status ``running``, no lease, and
    ``created_at`` :data:`BASE_TIME`, in whatever columns the store filters and orders by.
    """

    def __call__(
        self, store: SagaStore, saga_id: str, *, fault: Fault = "garbage"
    ) -> Awaitable[None]:
        """Store the row."""
        ...


FAULTS: tuple[Fault, ...] = ("garbage", "foreign_name", "foreign_id")

BASE_TIME = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def make_record(
    saga_id: str,
    *,
    saga_name: str = "orders",
    status: SagaStatus = SagaStatus.RUNNING,
    created_at: datetime = BASE_TIME,
    owner: str | None = None,
    lease_id: str | None = None,
    lease_expires_at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> SagaRecord:
    """Build a record as the engine would store it."""
    return SagaRecord(
        saga_id=saga_id,
        saga_name=saga_name,
        status=status,
        data={"order_id": saga_id} if data is None else data,
        created_at=created_at,
        updated_at=created_at,
        completed_at=created_at if status.is_terminal else None,
        metadata={"correlation_id": f"corr-{saga_id}"},
        deadline_at=created_at + timedelta(minutes=5),
        current_step="reserve",
        lease_owner=owner,
        lease_id=lease_id,
        lease_expires_at=lease_expires_at,
    )


def full_record(saga_id: str) -> SagaRecord:
    """A record with every field set, for round-trip checks."""
    record = make_record(saga_id, data={"text": "naïve ✓ \u0000 \U0001f600", "n": 2**65})
    record.steps["reserve"] = SagaStepRecord(
        step_name="reserve",
        status=SagaStepStatus.COMPENSATED,
        started_at=BASE_TIME,
        completed_at=BASE_TIME + timedelta(seconds=1),
        output={"reservation": "r-1", "items": [1, 2.5, None, True]},
        error=None,
        attempts=2,
        attempt_errors=["OSError: flaky"],
        compensation_attempts=1,
        compensation_error=None,
        compensated_at=BASE_TIME + timedelta(seconds=3),
        completion_seq=1,
        visits=1,
        parent=None,
    )
    record.steps["charge"] = SagaStepRecord(
        step_name="charge",
        status=SagaStepStatus.FAILED,
        started_at=BASE_TIME + timedelta(seconds=1),
        completed_at=BASE_TIME + timedelta(seconds=2),
        error="declined",
        attempts=1,
        attempt_errors=["declined"],
        visits=1,
        parent="payments",
    )
    record.status = SagaStatus.COMPENSATING
    record.error = "step 'charge' failed: declined"
    record.transitions = 2
    record.previous_owner = "w0"
    record.recovery_attempts = 3
    return record


def same_fields(a: SagaRecord, b: SagaRecord) -> bool:
    """Compare every field but ``version`` (which the store bumps)."""
    left = {name: getattr(a, name) for name in SagaRecord.__slots__ if name != "version"}
    right = {name: getattr(b, name) for name in SagaRecord.__slots__ if name != "version"}
    return left == right


def _with_step(record: SagaRecord, **fields: Any) -> None:
    record.steps["reserve"] = SagaStepRecord("reserve", SagaStepStatus.COMPLETED, **fields)


def _set_in_data(record: SagaRecord) -> None:
    record.data["tags"] = {"a", "b"}


def _int_key(record: SagaRecord) -> None:
    data: dict[Any, Any] = record.data
    data[1] = "one"  # JSON would silently store it as "1"


def _nested_int_key(record: SagaRecord) -> None:
    record.data["outer"] = {"inner": [{1: "one"}]}


def _lone_surrogate(record: SagaRecord) -> None:
    record.data["name"] = "caf\udce9"


def _huge_int(record: SagaRecord) -> None:
    record.data["big"] = 10**5000  # more digits than Python prints by default (4300)


def _nan(record: SagaRecord) -> None:
    record.data["ratio"] = math.nan


def _bad_metadata(record: SagaRecord) -> None:
    record.metadata["trace"] = {"id": math.inf}


def _bad_output(record: SagaRecord) -> None:
    _with_step(record, output={"ids": {1, 2}})


def _bad_step_error(record: SagaRecord) -> None:
    _with_step(record, error="declined: \ud800", attempt_errors=["declined: \ud800"])


def _bad_saga_error(record: SagaRecord) -> None:
    record.error = "failed: \udfff"


def _several(record: SagaRecord) -> None:
    _set_in_data(record)
    _nan(record)
    _bad_output(record)


UNSTORABLE: list[tuple[Callable[[SagaRecord], None], tuple[Rejection, ...]]] = [
    (_set_in_data, (Rejection("data", "tags"),)),
    (_int_key, (Rejection("data", "1"),)),
    (_nested_int_key, (Rejection("data", "outer"),)),
    (_lone_surrogate, (Rejection("data", "name"),)),
    (_huge_int, (Rejection("data", "big"),)),
    (_nan, (Rejection("data", "ratio"),)),
    (_bad_metadata, (Rejection("metadata", "trace"),)),
    (_bad_output, (Rejection("output", "reserve"),)),
    (_bad_step_error, (Rejection("error", "reserve"),)),
    (_bad_saga_error, (Rejection("error", ""),)),
    (
        _several,
        (Rejection("data", "tags"), Rejection("data", "ratio"), Rejection("output", "reserve")),
    ),
]
"""Ways to spoil a record, and the rejections every store must report for them."""


class StoreContract:
    """Behaviour every saga store must show (SPEC section 7)."""

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

    async def test_unserialisable_data_is_rejected_before_writing(self, store: SagaStore) -> None:
        """A value JSON cannot hold raises SagaDataError naming its key; nothing is written."""
        record = make_record("s-1")
        await store.save(record)
        record.data["when"] = datetime.now(UTC)
        with pytest.raises(SagaDataError) as caught:
            await store.save(record)
        assert caught.value.keys == ("when",)
        assert record.version == 1
        loaded = await store.load("s-1")
        assert loaded is not None
        assert (loaded.version, "when" in loaded.data) == (1, False)

    @pytest.mark.parametrize(
        ("spoil", "rejections"),
        UNSTORABLE,
        ids=[spoil.__name__.strip("_") for spoil, _ in UNSTORABLE],
    )
    async def test_unstorable_value_is_refused_naming_it(
        self,
        store: SagaStore,
        spoil: Callable[[SagaRecord], None],
        rejections: tuple[Rejection, ...],
    ) -> None:
        """Every store refuses the same values with the same rejections, writing nothing."""
        new = make_record("s-new")
        spoil(new)
        with pytest.raises(SagaDataError) as caught:
            await store.save(new)
        assert caught.value.rejections == rejections
        assert (new.version, await store.load("s-new")) == (0, None)

        record = make_record("s-1")
        await store.save(record)
        before = await store.load("s-1")
        spoil(record)
        with pytest.raises(SagaDataError) as caught:
            await store.save(record)
        assert caught.value.rejections == rejections
        assert caught.value.keys == tuple(r.key for r in rejections if r.kind == "data")
        assert caught.value.saga_id == "s-1"
        assert record.version == 1
        assert await store.load("s-1") == before

    async def test_corrupt_row_is_reported(self, store: SagaStore, corrupt_row: CorruptRow) -> None:
        """An unreadable row raises CorruptRecordError naming the saga."""
        await corrupt_row(store, "bad-1")
        with pytest.raises(CorruptRecordError) as caught:
            await store.load("bad-1")
        assert caught.value.saga_id == "bad-1"
        assert "bad-1" in str(caught.value)

    @pytest.mark.parametrize("fault", FAULTS)
    async def test_load_reports_every_kind_of_corrupt_row(
        self, store: SagaStore, corrupt_row: CorruptRow, fault: Fault
    ) -> None:
        """A row unreadable for any reason makes load() raise CorruptRecordError naming it."""
        await corrupt_row(store, "bad-1", fault=fault)
        with pytest.raises(CorruptRecordError) as caught:
            await store.load("bad-1")
        assert caught.value.saga_id == "bad-1"

    async def test_claim_skips_corrupt_rows(
        self, store: SagaStore, corrupt_row: CorruptRow
    ) -> None:
        """A corrupt row does not stop claims of the other sagas."""
        await store.save(make_record("good", created_at=BASE_TIME + timedelta(seconds=1)))
        await corrupt_row(store, "bad-1")
        claimed = await store.claim("w1", "l1", lease_seconds=30, saga_names=["orders"])
        assert [record.saga_id for record in claimed] == ["good"]

    @pytest.mark.parametrize("fault", FAULTS)
    async def test_unreadable_row_never_strands_a_claim_batch(
        self,
        store: SagaStore,
        corrupt_row: CorruptRow,
        fault: Fault,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A claim takes the readable sagas around an unreadable one, logs it, leaves it free."""
        await store.save(make_record("early", created_at=BASE_TIME - timedelta(seconds=1)))
        await corrupt_row(store, "bad-1", fault=fault)
        await store.save(make_record("late", created_at=BASE_TIME + timedelta(seconds=1)))
        with caplog.at_level(logging.ERROR, logger="lexigram.events.sagas"):
            claimed = await store.claim(
                "w1", "l1", lease_seconds=30, saga_names=["orders"], limit=2
            )
            by_id = await store.claim(
                "w1", "l1", lease_seconds=30, saga_names=["orders"], saga_id="bad-1"
            )
        assert [(r.saga_id, r.saga_name) for r in claimed] == [
            ("early", "orders"),
            ("late", "orders"),
        ]
        assert by_id == []
        logged = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert logged
        assert all("bad-1" in r.getMessage() for r in logged)
        # Not left leased to the claimer, and still reported to whoever reads it.
        assert await store.renew("w1", "l1", ["bad-1"], lease_seconds=30) == []
        assert await store.release("bad-1", "w1", "l1") is False
        with pytest.raises(CorruptRecordError) as caught:
            await store.load("bad-1")
        assert caught.value.saga_id == "bad-1"

    @pytest.mark.parametrize("fault", FAULTS)
    async def test_listing_skips_unreadable_rows_and_logs_them(
        self,
        store: SagaStore,
        corrupt_row: CorruptRow,
        fault: Fault,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """list() and list_by_name() return the readable sagas and log the unreadable one."""
        await store.save(make_record("early", created_at=BASE_TIME - timedelta(seconds=1)))
        await corrupt_row(store, "bad-1", fault=fault)
        await store.save(make_record("late", created_at=BASE_TIME + timedelta(seconds=1)))
        with caplog.at_level(logging.ERROR, logger="lexigram.events.sagas"):
            listings = [
                await store.list(),
                await store.list(limit=2),
                await store.list(saga_name="orders", status=SagaStatus.RUNNING, limit=2),
                await store.list_by_name("orders"),
            ]
        for listed in listings:
            assert [r.saga_id for r in listed] == ["late", "early"]
        logged = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert logged
        assert all("bad-1" in r.getMessage() for r in logged)
        with pytest.raises(CorruptRecordError):
            await store.load("bad-1")

    # ------------------------------------------------------------------ listing and deleting

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

    # ------------------------------------------------------------------ claims and leases

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
