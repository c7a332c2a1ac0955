"""Statuses, records and the pure transition rules (SPEC section 5)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from enum import StrEnum

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaStepResult
from lexigram.events.sagas.errors import CompensationFailedError, SagaError, SagaTimeoutError
from lexigram.events.sagas.types import (
    FAILURE_KINDS,
    TERMINAL_SAGA_STATUSES,
    SagaFailure,
    SagaRecord,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
    can_transition_saga,
    can_transition_step,
    move_saga,
    move_step,
)
from tests.support.helpers import WAIT, Script, manager_for, returning

SIX = {"pending", "running", "completed", "compensating", "compensated", "failed"}
S = SagaStatus
T = SagaStepStatus


@pytest.mark.parametrize("enum", [SagaStatus, SagaStepStatus])
def test_statuses_are_str_enums(enum: type[StrEnum]) -> None:
    """Both status types are ``StrEnum``s."""
    assert issubclass(enum, StrEnum)


@pytest.mark.parametrize("enum", [SagaStatus, SagaStepStatus])
def test_statuses_have_exactly_six_lower_case_values(enum: type[StrEnum]) -> None:
    """The members are exactly the six documented upper-case names with lower-case values."""
    assert {member.value for member in enum} == SIX
    assert {member.name for member in enum} == {value.upper() for value in SIX}


def test_status_compares_equal_to_its_string() -> None:
    """A status is its string value."""
    completed: str = SagaStatus.COMPLETED
    assert completed == "completed"
    assert str(SagaStepStatus.FAILED) == "failed"


def test_terminal_statuses() -> None:
    """COMPLETED, COMPENSATED and FAILED are terminal; nothing else is."""
    assert frozenset({S.COMPLETED, S.COMPENSATED, S.FAILED}) == TERMINAL_SAGA_STATUSES
    assert [status for status in SagaStatus if status.is_terminal] == [
        S.COMPLETED,
        S.COMPENSATED,
        S.FAILED,
    ]


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
        (S.RUNNING, S.COMPENSATING),
        (S.COMPENSATING, S.COMPENSATED),
        (S.COMPENSATING, S.FAILED),
        (S.RUNNING, S.FAILED),
    ],
)
def test_documented_saga_transitions_are_allowed(current: SagaStatus, new: SagaStatus) -> None:
    """Every saga transition of SPEC section 5 is allowed."""
    assert can_transition_saga(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.RUNNING, S.PENDING),
        (S.COMPENSATING, S.RUNNING),
        (S.COMPENSATING, S.COMPLETED),
        (S.RUNNING, S.COMPENSATED),
    ],
)
def test_backward_saga_transitions_are_refused(current: SagaStatus, new: SagaStatus) -> None:
    """A saga never goes back, nor compensates without COMPENSATING."""
    assert not can_transition_saga(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [(c, n) for c, n in itertools.product(TERMINAL_SAGA_STATUSES, SagaStatus) if c != n],
)
def test_terminal_saga_states_never_change(current: SagaStatus, new: SagaStatus) -> None:
    """No transition leaves a terminal saga status."""
    assert not can_transition_saga(current, new)


@pytest.mark.parametrize("status", list(SagaStatus))
def test_staying_put_is_allowed(status: SagaStatus) -> None:
    """A status may be saved again unchanged."""
    assert can_transition_saga(status, status)
    assert can_transition_step(SagaStepStatus(status.value), SagaStepStatus(status.value))


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (T.PENDING, T.RUNNING),
        (T.RUNNING, T.COMPLETED),
        (T.RUNNING, T.FAILED),
        (T.COMPLETED, T.COMPENSATING),
        (T.COMPENSATING, T.COMPENSATED),
        (T.COMPENSATING, T.FAILED),
    ],
)
def test_documented_step_transitions_are_allowed(
    current: SagaStepStatus, new: SagaStepStatus
) -> None:
    """Every step transition of SPEC section 5 is allowed."""
    assert can_transition_step(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (T.RUNNING, T.PENDING),
        (T.COMPENSATED, T.RUNNING),
        (T.COMPENSATED, T.COMPLETED),
        (T.RUNNING, T.COMPENSATED),
        (T.PENDING, T.COMPENSATING),
    ],
)
def test_invalid_step_transitions_are_refused(current: SagaStepStatus, new: SagaStepStatus) -> None:
    """A step cannot skip COMPENSATING, go back, or leave COMPENSATED."""
    assert not can_transition_step(current, new)


def test_record_defaults() -> None:
    """A new record is PENDING, version 0, without steps, times or lease."""
    record = SagaRecord("s-1", "orders")
    assert record.status is SagaStatus.PENDING
    assert record.version == 0
    assert record.steps == {}
    assert record.completed_at is None
    assert record.lease_owner is None
    assert not record.is_terminal


def test_record_has_upstream_and_added_fields() -> None:
    """The record carries every field SPEC section 5 names."""
    record = SagaRecord("s-1", "orders")
    for name in (
        "saga_id",
        "saga_name",
        "status",
        "data",
        "steps",
        "created_at",
        "updated_at",
        "completed_at",
        "error",
        "version",
        "metadata",
        "deadline_at",
        "lease_owner",
        "lease_expires_at",
    ):
        assert hasattr(record, name), name


def test_step_record_has_documented_fields() -> None:
    """A step record carries its status, times, output, error, attempts and compensation."""
    step = SagaStepRecord("reserve")
    assert step.status is SagaStepStatus.PENDING
    assert (step.output, step.error, step.attempts, step.attempt_errors) == ({}, None, 0, [])
    assert step.compensation_attempts == 0
    assert step.compensation_error is None
    assert step.completion_seq is None


def test_record_correlation_id_defaults_to_saga_id() -> None:
    """Without metadata the record's correlation id is its saga id."""
    assert SagaRecord("s-1", "orders").correlation_id == "s-1"
    assert SagaRecord("s-1", "o", metadata={"correlation_id": "c"}).correlation_id == "c"


def test_record_is_terminal_follows_status() -> None:
    """``is_terminal`` is true exactly for terminal statuses."""
    for status in SagaStatus:
        assert SagaRecord("s", "n", status=status).is_terminal is (status in TERMINAL_SAGA_STATUSES)


def test_step_statuses_in_execution_order() -> None:
    """``step_statuses`` maps step names to statuses in execution order."""
    record = SagaRecord(
        "s",
        "n",
        steps={
            "b": SagaStepRecord("b", SagaStepStatus.COMPLETED),
            "a": SagaStepRecord("a", SagaStepStatus.FAILED),
        },
    )
    assert list(record.step_statuses().items()) == [
        ("b", SagaStepStatus.COMPLETED),
        ("a", SagaStepStatus.FAILED),
    ]


async def test_datetimes_of_a_run_are_utc_aware() -> None:
    """Every datetime the engine stores is tz-aware UTC."""
    script = Script()
    script.behaviours["c"] = returning(SagaStepResult.fail("no"))
    manager = manager_for(script, config=SagaConfig(retry_delay_seconds=0))
    record = await manager.execute("scripted", timeout=WAIT)
    stamps = [record.created_at, record.updated_at, record.completed_at, record.deadline_at]
    for step in record.steps.values():
        stamps += [step.started_at, step.completed_at]
    stamps.append(record.steps["a"].compensated_at)
    assert all(stamp is not None for stamp in stamps)
    assert all(stamp.utcoffset() == timedelta(0) for stamp in stamps if stamp is not None)
    await manager.close()


async def test_step_records_follow_execution_order() -> None:
    """``record.steps`` lists the steps in the order they ran."""
    manager = manager_for(Script(), ("z", "m", "a"), config=SagaConfig(retry_delay_seconds=0))
    record = await manager.execute("scripted", timeout=WAIT)
    assert list(record.steps) == ["z", "m", "a"]
    await manager.close()


async def test_completion_order_is_recorded() -> None:
    """``completion_seq`` numbers completed steps in completion order."""
    manager = manager_for(Script(), config=SagaConfig(retry_delay_seconds=0))
    record = await manager.execute("scripted", timeout=WAIT)
    seqs = [record.steps[name].completion_seq or 0 for name in ("a", "b", "c")]
    assert all(seq > 0 for seq in seqs)
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    await manager.close()


# --------------------------------------------------------------------------- raise_for_failure


def _ended(status: SagaStatus, failure: SagaFailure | None) -> SagaRecord:
    record = SagaRecord("s-1", "orders", status=status, error="why", failure=failure)
    record.steps["pay"] = SagaStepRecord(
        "pay", status=SagaStepStatus.FAILED, compensation_error="refund refused"
    )
    return record


def test_raise_for_failure_is_silent_for_a_completed_or_running_saga() -> None:
    """Completed and unfinished sagas raise nothing."""
    for status in (SagaStatus.COMPLETED, SagaStatus.RUNNING, SagaStatus.PENDING):
        SagaRecord("s", "n", status=status).raise_for_failure()


def test_raise_for_failure_names_the_compensations_that_gave_up() -> None:
    """A saga ``FAILED`` by its compensations raises ``CompensationFailedError``."""
    failure = SagaFailure("compensation_failed", "pay", "why")
    with pytest.raises(CompensationFailedError) as caught:
        _ended(SagaStatus.FAILED, failure).raise_for_failure()
    assert caught.value.steps == ("pay",)
    assert caught.value.saga_id == "s-1"


def test_raise_for_failure_of_a_passed_deadline_is_a_timeout() -> None:
    """A saga compensated because its deadline passed raises ``SagaTimeoutError``."""
    with pytest.raises(SagaTimeoutError):
        _ended(SagaStatus.COMPENSATED, SagaFailure("deadline", "pay", "why")).raise_for_failure()


def test_raise_for_failure_of_a_declined_step_is_a_saga_error() -> None:
    """Any other unsuccessful end raises ``SagaError`` with the saga's error."""
    with pytest.raises(SagaError, match="why"):
        _ended(SagaStatus.COMPENSATED, SagaFailure("step_failed", "pay", "why")).raise_for_failure()


def test_failure_kinds_are_the_documented_ones() -> None:
    """``FAILURE_KINDS`` lists exactly the kinds SPEC section 11 names."""
    assert {
        "step_failed",
        "step_error",
        "timeout",
        "deadline",
        "cancelled",
        "crash_loop",
        "transition",
        "compensation_failed",
    } == FAILURE_KINDS


def test_illegal_status_moves_are_refused() -> None:
    """The guarded move refuses what the table forbids (a terminal saga never moves)."""
    record = SagaRecord("s", "n", status=SagaStatus.COMPLETED)
    with pytest.raises(ValueError, match="cannot move from completed to running"):
        move_saga(record, SagaStatus.RUNNING)
    step = SagaStepRecord("a", status=SagaStepStatus.COMPENSATED)
    with pytest.raises(ValueError, match="cannot move"):
        move_step(step, SagaStepStatus.RUNNING)
