"""Step-record bookkeeping of a run: entering a visit, failing, where the flow goes next.

Small functions over the run's record (no I/O), shared by the forward path and the stop
handling of the engine.
"""

from __future__ import annotations

from datetime import datetime

from lexigram.events.sagas._engine.flow import FlowStep
from lexigram.events.sagas._engine.rules import AttemptOutcome, describe_error
from lexigram.events.sagas._engine.run import SagaRun
from lexigram.events.sagas.codec import storable_json
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.types import (
    SagaStepRecord,
    SagaStepStatus,
    can_transition_step,
    move_step,
)

__all__ = ["ENTERABLE", "check_child", "enter_step", "fail_in_flight", "fail_step", "next_step"]

_RUNNING = SagaStepStatus.RUNNING
_COMPLETED = SagaStepStatus.COMPLETED
_FAILED = SagaStepStatus.FAILED

ENTERABLE = frozenset(s for s in SagaStepStatus if can_transition_step(s, _RUNNING))
"""The step statuses from which a new visit may start (the transition table's say)."""


def enter_step(run: SagaRun, node: FlowStep, now: datetime) -> SagaStepRecord:
    """Return the step's record, starting a new visit unless one is in progress."""
    record = run.record
    step = record.steps.get(node.name)
    if step is None:
        step = record.steps[node.name] = SagaStepRecord(node.name, parent=node.parent)
    current = step.status
    if current is not _RUNNING or step.visits == 0:
        if current not in ENTERABLE:
            move_step(step, _RUNNING)  # raises: the table does not allow it
        step.status = _RUNNING  # checked above against the table, without a call
        step.visits += 1
        step.attempts = 0
        step.attempt_errors = []
        step.error = None
        step.completion_seq = None
        step.completed_at = None
        step.started_at = now
    return step


def fail_step(run: SagaRun, node: FlowStep, error: str, now: datetime) -> None:
    """Mark ``node``'s step failed with ``error`` (creating its record if it never ran here).

    A record created here has ``started_at`` set only when a crashed worker may have run
    the step (the saga was taken over without progress since): whether it ran then is
    unknown, while a step that was never started in any worker keeps ``started_at`` unset
    (``compensate_failed`` compensates the first, never the second).
    """
    step = run.record.steps.get(node.name)
    if step is None:
        step = run.record.steps[node.name] = SagaStepRecord(node.name, parent=node.parent)
        if run.record.recovery_attempts > 0:
            step.started_at = now
    move_step(step, _FAILED)
    step.error = error
    step.completion_seq = None
    step.completed_at = now
    run.ctx.step_results.pop(node.name, None)


def fail_in_flight(run: SagaRun, error: str, now: datetime) -> None:
    """Mark the steps that were running (or about to run) as failed with ``error``."""
    record = run.record
    running = [step for step in record.steps.values() if step.status is _RUNNING]
    name = record.current_step
    if not running and name is not None and name in run.flow.steps:
        step = record.steps.get(name)
        if step is None or step.status is not _COMPLETED:
            fail_step(run, run.flow.steps[name], error, now)
    for step in running:
        move_step(step, _FAILED)
        step.error = error
        step.completed_at = now


def next_step(run: SagaRun, node: FlowStep) -> tuple[str | None, str]:
    """Resolve where the flow goes after ``node``: ``(name, "")`` or ``(None, error)``."""
    target = node.next
    if target is None or isinstance(target, str):
        return target, ""
    try:
        chosen = target(run.ctx)
    except Exception as exc:
        return None, f"the transition after step '{node.name}' raised {describe_error(exc)}"
    if chosen is None:
        return None, ""
    steps = run.flow.steps
    if not isinstance(chosen, str) or chosen not in steps:
        return None, f"the transition after step '{node.name}' returned unknown step {chosen!r}"
    if steps[chosen].parent is not None:
        return None, (
            f"the transition after step '{node.name}' returned '{chosen}', a child of a "
            "parallel group"
        )
    return chosen, ""


def check_child(run: SagaRun, ctx: SagaContext, outcome: AttemptOutcome) -> AttemptOutcome:
    """Check what a child of a parallel group left behind, before it enters the record.

    Siblings share the record, so a value no store can hold must be caught here, where it
    is known whose it is, not by a sibling's write. A child may change keys of
    ``ctx.data``/``ctx.metadata`` but not replace them (siblings share them).
    """
    if ctx.data is not run.ctx.data or ctx.metadata is not run.ctx.metadata:
        ctx.data, ctx.metadata = run.ctx.data, run.ctx.metadata
        return AttemptOutcome.failure(
            f"SagaDataError: step '{ctx.step_name}' replaced ctx.data or ctx.metadata; a "
            "parallel step may change their keys, not replace them",
            "step_error",
            retryable=False,
        )
    if outcome.poll is not None:
        return AttemptOutcome.failure(
            f"SagaDefinitionError: step '{ctx.step_name}' returned retry_after, but a "
            "parallel step cannot park its saga; poll in a step before or after the group",
            "step_error",
            retryable=False,
        )
    if outcome.ok:
        try:
            storable_json(outcome.output)
        except (TypeError, ValueError, RecursionError):
            return AttemptOutcome.failure(
                f"SagaDataError: step '{ctx.step_name}' returned an output no store can hold",
                "step_error",
                retryable=False,
            )
    return outcome
