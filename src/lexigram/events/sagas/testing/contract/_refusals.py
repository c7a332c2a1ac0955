"""Conformance: what a store refuses to write, and the rows it cannot read.

Every store refuses the same values (the codec's rule) with the same ``SagaDataError``
rejections, writing nothing; and a row it cannot read is reported by ``load`` and skipped,
with a log record, by ``list`` and ``claim``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lexigram.events.sagas import (
    CorruptRecordError,
    SagaDataError,
    SagaRecord,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
    SagaStore,
)
from lexigram.events.sagas.errors import Rejection
from lexigram.events.sagas.testing.contract._records import (
    BASE_TIME,
    FAULTS,
    CorruptRow,
    Fault,
    make_record,
)


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


# Error texts JSON could hold but that are not text: a record's errors are ``str``.
def _number_in_attempt_errors(record: SagaRecord) -> None:
    _with_step(record, attempts=2, attempt_errors=["timeout", 404])


def _number_as_step_error(record: SagaRecord) -> None:
    _with_step(record, error=404)


def _object_as_compensation_error(record: SagaRecord) -> None:
    _with_step(record, compensation_error={"code": 409})


def _number_as_saga_error(record: SagaRecord) -> None:
    error: Any = 500
    record.error = error


def _several(record: SagaRecord) -> None:
    _set_in_data(record)
    _nan(record)
    _bad_output(record)


def _tuple_in_data(record: SagaRecord) -> None:
    record.data["point"] = (1, 2)  # would come back as a list: refused (the engine reshapes)


def _tuple_in_output(record: SagaRecord) -> None:
    record.steps["reserve"] = SagaStepRecord("reserve", output={"ids": ("a", "b")})


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
    (_number_in_attempt_errors, (Rejection("error", "reserve"),)),
    (_number_as_step_error, (Rejection("error", "reserve"),)),
    (_object_as_compensation_error, (Rejection("error", "reserve"),)),
    (_number_as_saga_error, (Rejection("error", ""),)),
    (_tuple_in_data, (Rejection("data", "point"),)),
    (_tuple_in_output, (Rejection("output", "reserve"),)),
    (
        _several,
        (Rejection("data", "tags"), Rejection("data", "ratio"), Rejection("output", "reserve")),
    ),
]
"""Ways to spoil a record, and the rejections every store must report for them."""


class RefusalContract:
    """Refused values and unreadable rows."""

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
