"""The JSON record codec shared by every store (SPEC sections 3, 7 and 10)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexigram.events.sagas.codec import (
    FORMAT_VERSION,
    check_data,
    decode_record,
    dump_record,
    encode_record,
    format_time,
    parse_time,
    storable_json,
)
from lexigram.events.sagas.errors import CorruptRecordError, Rejection, SagaDataError
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepRecord, SagaStepStatus

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def full_record() -> SagaRecord:
    return SagaRecord(
        saga_id="s-1",
        saga_name="orders",
        status=SagaStatus.COMPENSATING,
        data={"order_id": "o-1", "items": [1, 2.5, None, True], "nested": {"k": "ü"}},
        steps={
            "reserve": SagaStepRecord(
                "reserve",
                SagaStepStatus.COMPENSATED,
                started_at=NOW,
                completed_at=NOW,
                output={"reservation": "r-1"},
                attempts=2,
                attempt_errors=["ConnectionError: flaky"],
                compensation_attempts=1,
                compensated_at=NOW,
                completion_seq=1,
                visits=1,
            ),
            "charge": SagaStepRecord(
                "charge", SagaStepStatus.FAILED, error="declined", attempts=1, visits=1
            ),
        },
        created_at=NOW,
        updated_at=NOW,
        error="step 'charge' failed: declined",
        version=7,
        metadata={"correlation_id": "trace-1"},
        deadline_at=NOW + timedelta(minutes=5),
        current_step=None,
        transitions=2,
        lease_owner="w-1",
        lease_id="l-1",
        lease_expires_at=NOW + timedelta(seconds=30),
        previous_owner="w-0",
        recovery_attempts=1,
    )


# --------------------------------------------------------------------------- check_data


def test_check_data_none_is_empty() -> None:
    """``None`` data is an empty object."""
    assert check_data(None) == {}


def test_check_data_returns_a_detached_copy() -> None:
    """The checked data is a copy: later changes to the input do not leak in."""
    original = {"items": [1, 2]}
    copied = check_data(original)
    original["items"].append(3)
    assert copied == {"items": [1, 2]}


@pytest.mark.parametrize("data", [[1, 2], "text", 42, ("a", 1)])
def test_check_data_rejects_non_dict(data: object) -> None:
    """Data that is not a dict is refused, naming its type."""
    with pytest.raises(SagaDataError, match=type(data).__name__):
        check_data(data)


@pytest.mark.parametrize(
    "value", [object(), {1, 2}, datetime.now(UTC), b"bytes", math.nan, math.inf]
)
def test_check_data_rejects_non_json_values_naming_the_key(value: object) -> None:
    """A non-JSON value is refused; the error names the key."""
    with pytest.raises(SagaDataError, match="'bad'") as info:
        check_data({"good": 1, "bad": value})
    assert info.value.keys == ("bad",)


def test_check_data_rejects_non_str_keys() -> None:
    """A non-string key would not round-trip and is refused."""
    with pytest.raises(SagaDataError):
        check_data({1: "one"})


def test_check_data_rejects_nested_non_str_keys() -> None:
    """A non-string key at any depth is refused, naming the top-level key."""
    with pytest.raises(SagaDataError, match="'outer'"):
        check_data({"outer": {2: "x"}})


def test_check_data_error_never_contains_the_value() -> None:
    """Error messages name keys, never payload values."""

    class Secret:
        def __repr__(self) -> str:
            return "TOP-SECRET"

    with pytest.raises(SagaDataError) as info:
        check_data({"card": Secret()})
    assert "TOP-SECRET" not in str(info.value)


@given(json_objects)
def test_check_data_accepts_and_preserves_any_json_object(data: dict[str, object]) -> None:
    """Any JSON object passes unchanged."""
    assert check_data(data) == data


# --------------------------------------------------------------------------- times


def test_format_time_is_utc_microseconds() -> None:
    """Times are written as whole microseconds since the Unix epoch, whatever their zone."""
    local = datetime(2024, 5, 1, 14, 0, 0, 7, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(local) == 1_714_564_800_000_007
    assert format_time(None) is None


def test_parse_time_returns_utc() -> None:
    """Parsed times are tz-aware UTC and exact to the microsecond."""
    parsed = parse_time(1_714_564_800_000_007, "created_at")
    assert parsed == NOW + timedelta(microseconds=7)
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["2024-05-01T12:00:00+00:00", "yesterday", 1.5, True, 10**30])
def test_parse_time_rejects_naive_or_garbage(value: object) -> None:
    """A naive or unreadable time is a corrupt field, named."""
    with pytest.raises(CorruptRecordError, match="created_at") as info:
        parse_time(value, "created_at", "s-1")
    assert info.value.field == "created_at"


# --------------------------------------------------------------------------- records


def test_record_round_trips() -> None:
    """Every field survives encode + decode."""
    record = full_record()
    assert decode_record(encode_record(record)) == record


def test_encoded_record_is_plain_json_with_format_version() -> None:
    """The stored document is JSON with a format version."""
    doc = json.loads(encode_record(full_record()))
    assert doc["v"] == FORMAT_VERSION
    assert doc["status"] == "compensating"
    assert [step["step_name"] for step in doc["steps"]] == ["reserve", "charge"]


def test_step_order_survives_round_trip() -> None:
    """Steps keep their execution order."""
    decoded = decode_record(encode_record(full_record()))
    assert list(decoded.steps) == ["reserve", "charge"]


@given(json_objects)
def test_any_json_data_round_trips(data: dict[str, object]) -> None:
    """Hypothesis-generated JSON data round-trips exactly."""
    record = SagaRecord("s", "n", data=data, created_at=NOW)
    assert decode_record(encode_record(record)).data == data


def test_encode_rejects_unserialisable_data_naming_the_key() -> None:
    """Encoding a record with a non-JSON data value names the key."""
    record = SagaRecord("s-1", "n", data={"when": datetime.now(UTC)})
    with pytest.raises(SagaDataError, match="'when'") as info:
        encode_record(record)
    assert info.value.saga_id == "s-1"


def test_encode_rejects_unserialisable_output_naming_the_step() -> None:
    """A non-JSON step output is refused, naming the step."""
    record = SagaRecord("s", "n", steps={"charge": SagaStepRecord("charge", output={"x": {1}})})
    with pytest.raises(SagaDataError, match="output of step 'charge'") as info:
        encode_record(record)
    assert info.value.rejections == (Rejection("output", "charge"),)
    assert info.value.keys == ()


def test_encode_names_every_rejected_value_by_kind() -> None:
    """Data, metadata, outputs and error texts are each named, in record order."""
    record = SagaRecord(
        "s-1",
        "n",
        data={"ok": 1, "when": datetime.now(UTC), "ratio": math.nan},
        metadata={"trace": {2: "x"}},
        steps={
            "reserve": SagaStepRecord("reserve", output={"ids": {1}}),
            "charge": SagaStepRecord("charge", attempt_errors=["boom \ud800"]),
        },
        error="failed \udfff",
    )
    with pytest.raises(SagaDataError) as info:
        encode_record(record)
    assert info.value.rejections == (
        Rejection("data", "when"),
        Rejection("data", "ratio"),
        Rejection("metadata", "trace"),
        Rejection("output", "reserve"),
        Rejection("error", "charge"),
        Rejection("error", ""),
    )
    assert info.value.keys == ("when", "ratio")


@pytest.mark.parametrize(
    "value",
    [{1, 2}, {"a": {1: "x"}}, [{"k": {2: "y"}}], "\ud800", math.nan, math.inf, 10**5000],
    ids=["set", "int-key", "nested-int-key", "lone-surrogate", "nan", "inf", "huge-int"],
)
def test_storable_json_refuses_what_no_store_can_hold(value: object) -> None:
    """Sets, non-str keys at any depth, lone surrogates, NaN/inf and huge ints are refused."""
    with pytest.raises((TypeError, ValueError)):
        storable_json(value)


@given(json_values)
def test_storable_json_accepts_any_json_value(value: object) -> None:
    """JSON values with str keys are accepted, and the text is valid UTF-8 JSON."""
    text = storable_json(value)
    text.encode()
    assert json.loads(text) == value


def test_decode_rejects_invalid_json() -> None:
    """Text that is not JSON is a corrupt record."""
    with pytest.raises(CorruptRecordError, match="not valid JSON"):
        decode_record("{broken", saga_id="s-1")


def test_decode_rejects_non_object() -> None:
    """A JSON document that is not an object is a corrupt record."""
    with pytest.raises(CorruptRecordError):
        decode_record("[1, 2]")


def test_decode_rejects_unknown_format_version() -> None:
    """A document of another format version is refused, naming the version field."""
    doc = dump_record(full_record())
    doc["v"] = 99
    with pytest.raises(CorruptRecordError, match="99") as info:
        decode_record(json.dumps(doc))
    assert info.value.field == "v"


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", "7"), ("data", []), ("status", "exploded"), ("saga_name", None)],
)
def test_decode_rejects_wrong_field_types_naming_the_field(field: str, value: object) -> None:
    """A field of the wrong type is refused, naming it."""
    doc = dump_record(full_record())
    doc[field] = value
    with pytest.raises(CorruptRecordError, match=field):
        decode_record(json.dumps(doc))


def test_decode_rejects_bool_as_int() -> None:
    """``true`` is not a version number."""
    doc = dump_record(full_record())
    doc["version"] = True
    with pytest.raises(CorruptRecordError, match="version"):
        decode_record(json.dumps(doc))


def test_decode_rejects_bad_step_status() -> None:
    """An unknown step status is refused."""
    doc = dump_record(full_record())
    doc["steps"][0]["status"] = "teleported"
    with pytest.raises(CorruptRecordError, match="status"):
        decode_record(json.dumps(doc))


def test_decode_rejects_a_foreign_saga_id() -> None:
    """A row whose document holds another saga id than its key is refused."""
    with pytest.raises(CorruptRecordError, match="saga_id"):
        decode_record(encode_record(full_record()), saga_id="other")


def test_decode_error_names_the_saga() -> None:
    """Corrupt-record errors carry the saga id."""
    with pytest.raises(CorruptRecordError) as info:
        decode_record("{", saga_id="s-9")
    assert info.value.saga_id == "s-9"
    assert "s-9" in str(info.value)


def test_decode_error_never_contains_payload() -> None:
    """A corrupt field's error does not quote the stored data."""
    doc = dump_record(full_record())
    doc["data"] = "TOP-SECRET-PAYLOAD"
    with pytest.raises(CorruptRecordError) as info:
        decode_record(json.dumps(doc))
    assert "TOP-SECRET" not in str(info.value)


def test_documents_leave_out_defaults_but_never_inside_user_values() -> None:
    """Default-valued keys are left out (smaller rows); user data keeps every key."""
    from lexigram.events.sagas.codec import dump_record, load_record
    from lexigram.events.sagas.types import SagaRecord, SagaStepRecord

    record = SagaRecord(
        saga_id="s-1",
        saga_name="orders",
        data={"zero": 0, "none": None, "empty": [], "nested": {"n": None}},
        metadata={"correlation_id": "c"},
    )
    record.steps["a"] = SagaStepRecord("a", output={"count": 0})
    doc = dump_record(record)
    assert "error" not in doc
    assert "failure" not in doc
    assert "cancel_reason" not in doc
    assert doc["version"] == 0
    assert doc["data"] == {"zero": 0, "none": None, "empty": [], "nested": {"n": None}}
    (step,) = doc["steps"]
    assert "attempt_errors" not in step
    assert step["output"] == {"count": 0}
    again = load_record(doc)
    assert again == record
    assert again.steps["a"].attempt_errors is not load_record(doc).steps["a"].attempt_errors


def test_a_document_with_every_key_still_loads() -> None:
    """Documents written before defaults were left out (every key present) read the same."""
    from lexigram.events.sagas.codec import dump_record, load_record
    from lexigram.events.sagas.testing.contract import full_record

    record = full_record("s-1")
    doc = dump_record(record)
    full = {**doc, "error": None, "lease_owner": None, "redrives": 0, "waiting": None}
    assert load_record(full).saga_id == "s-1"
    assert load_record(doc) == record
