"""Step-record bookkeeping: visits, failures, where the flow goes next."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lexigram.events.sagas._engine.flow import Flow, FlowStep, RetryPolicy
from lexigram.events.sagas._engine.run import SagaRun
from lexigram.events.sagas._engine.steps import (
    ENTERABLE,
    enter_step,
    fail_in_flight,
    fail_step,
    next_step,
)
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.types import SagaRecord, SagaStepStatus, can_transition_step

NOW = datetime(2026, 1, 2, tzinfo=UTC)
POLICY = RetryPolicy(max_retries=0, retry_delay=0, timeout=None)


def node(name: str, nxt: object = None) -> FlowStep:
    return FlowStep(name, None, None, POLICY, POLICY, next=nxt)  # type: ignore[arg-type]


def run_of(*nodes: FlowStep, current: str | None = None) -> SagaRun:
    flow = Flow("f", {n.name: n for n in nodes}, nodes[0].name, None, lambda: None, None)
    return SagaRun(SagaRecord("s", "f", current_step=current or nodes[0].name), flow)


def test_entering_a_step_starts_its_first_visit() -> None:
    """A step entered for the first time is ``RUNNING``, visit 1, no attempts yet."""
    run = run_of(node("a"))
    step = enter_step(run, node("a"), NOW)
    assert (step.status, step.visits, step.attempts, step.started_at) == (
        SagaStepStatus.RUNNING,
        1,
        0,
        NOW,
    )


def test_entering_a_running_step_keeps_its_visit() -> None:
    """A resumed step that was running keeps its visit and attempts."""
    run = run_of(node("a"))
    step = enter_step(run, node("a"), NOW)
    step.attempts = 2
    assert enter_step(run, node("a"), NOW).attempts == 2
    assert step.visits == 1


def test_entering_a_completed_step_again_is_a_new_visit() -> None:
    """A cycle entering a completed step starts visit 2 with a clean slate."""
    run = run_of(node("a"))
    step = enter_step(run, node("a"), NOW)
    step.status = SagaStepStatus.COMPLETED
    step.attempt_errors = ["x"]
    again = enter_step(run, node("a"), NOW)
    assert (again.visits, again.attempt_errors, again.status) == (
        2,
        [],
        SagaStepStatus.RUNNING,
    )


def test_failing_a_step_that_never_ran_creates_its_record() -> None:
    """A stop before a step started still records that step as failed."""
    run = run_of(node("a"), node("b"), current="b")
    fail_in_flight(run, "saga cancelled: by request", NOW)
    assert run.record.steps["b"].status is SagaStepStatus.FAILED
    assert run.record.steps["b"].error == "saga cancelled: by request"


def test_failing_a_step_drops_its_result_from_the_context() -> None:
    """A failed step has no output in ``ctx.step_results``."""
    run = run_of(node("a"))
    run.ctx.step_results["a"] = {"x": 1}
    fail_step(run, node("a"), "boom", NOW)
    assert "a" not in run.ctx.step_results


def test_a_transition_returning_an_unknown_step_is_reported() -> None:
    """A conditional transition naming a step that does not exist is an error, not a jump."""

    def choose(ctx: SagaContext) -> str:
        return "nowhere"

    run = run_of(node("a", choose))
    target, error = next_step(run, run.flow.steps["a"])
    assert target is None
    assert "unknown step 'nowhere'" in error


def test_a_transition_that_raises_is_reported() -> None:
    """A conditional transition that raises names the step and the exception."""

    def choose(ctx: SagaContext) -> str:
        raise KeyError("route")

    run = run_of(node("a", choose))
    _, error = next_step(run, run.flow.steps["a"])
    assert "after step 'a' raised KeyError" in error


def test_the_written_out_moves_are_the_ones_the_table_allows() -> None:
    """Statuses set without ``move_step`` are exactly the ones the table allows.

    ``enter_step`` and a completing attempt write the status out (the hot path).
    """
    assert {s for s in SagaStepStatus if can_transition_step(s, SagaStepStatus.RUNNING)} == (
        ENTERABLE
    )
    assert can_transition_step(SagaStepStatus.RUNNING, SagaStepStatus.COMPLETED)


def test_entering_a_compensated_step_is_refused() -> None:
    """A step already compensated cannot start a new visit (the table forbids it)."""
    run = run_of(node("a"))
    step = enter_step(run, node("a"), NOW)
    step.status = SagaStepStatus.COMPENSATED
    with pytest.raises(ValueError, match="cannot move from compensated to running"):
        enter_step(run, node("a"), NOW)
