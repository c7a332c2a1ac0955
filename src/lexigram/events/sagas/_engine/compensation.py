"""The backward half of a run: compensating completed steps in reverse completion order.

Written as a base class of :class:`~lexigram.events.sagas._engine.engine.Engine` (it uses
the engine's writer, clock and events), kept apart because it changes for its own reasons.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from random import random as _random
from typing import Any

from lexigram.events.sagas import events as ev
from lexigram.events.sagas._engine.announce import Announcer
from lexigram.events.sagas._engine.attempt import attempt_once
from lexigram.events.sagas._engine.backoff import retry_backoff
from lexigram.events.sagas._engine.flow import FlowStep
from lexigram.events.sagas._engine.hooks import EngineHooks, attempt_observed
from lexigram.events.sagas._engine.run import BROKEN, SagaRun
from lexigram.events.sagas._engine.writer import RecordWriter, describe_rejections
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.errors import SagaDataError
from lexigram.events.sagas.types import (
    SagaFailure,
    SagaRecord,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
    move_saga,
    move_step,
)

__all__ = ["Compensation", "poison_message", "seconds_between"]

logger = logging.getLogger(__name__)

_COMPLETED = SagaStepStatus.COMPLETED
_FAILED = SagaStepStatus.FAILED


def seconds_between(start: datetime | None, end: datetime | None) -> float:
    """``end - start`` in seconds (0 when either is unknown)."""
    if start is None or end is None:
        return 0.0
    return max((end - start).total_seconds(), 0.0)


def _undo_order(step: SagaStepRecord) -> float:
    """Completion order; a step whose action did not complete ran last of all."""
    return float("inf") if step.completion_seq is None else step.completion_seq


def poison_message(record: SagaRecord) -> str:
    """Why a saga's in-flight step was failed after too many takeovers."""
    return (
        "the saga kept crashing its worker: taken over "
        f"{record.recovery_attempts} times without progress"
    )


class Compensation:
    """Compensating a run, and the writes and events around it."""

    config: SagaConfig
    clock: Callable[[], datetime]
    rand: Callable[[], float] = _random
    sleep: Callable[[float], Awaitable[Any]]
    events: Announcer
    hooks: EngineHooks | None
    _writer: RecordWriter

    async def _pause(
        self, run: SagaRun, seconds: float, task: asyncio.Task[Any], *, forward: bool
    ) -> None:
        """Wait before a retry, interruptible like user code (through the given sleep)."""
        if seconds > 0:
            await run.call_user(self.sleep(seconds), task, forward=forward)
        run.checkpoint(forward=forward)

    async def _announce(self, run: SagaRun) -> None:
        """Publish the terminal event and wake the waiters (the record is durable now)."""
        record = run.record
        if self.events.bus is not None:
            took = seconds_between(record.created_at, record.completed_at)
            if record.status is SagaStatus.COMPLETED:
                await self.events.publish(run, ev.SagaCompleted, duration_seconds=took)
            elif record.status is SagaStatus.COMPENSATED:
                await self.events.publish(
                    run, ev.SagaCompensated, error=record.error or "", duration_seconds=took
                )
            else:
                await self.events.publish(
                    run, ev.SagaFailed, error=record.error or "", duration_seconds=took
                )
        run.finish(record)

    # ------------------------------------------------------------------ writes

    async def _save_noting(
        self, run: SagaRun, blame: str | None, finish: SagaStatus | None = None
    ) -> None:
        """Write the record; values the store refuses are put back and noted on ``blame``.

        Used where the unit that produced the values has already ended (a failed step, a
        compensation): the note goes on that step's error (or the saga's, with ``blame``
        ``None``), and the record is written without the values.

        Raises:
            SagaDataError: the store refused the record again after the repair.
        """
        refused = await self._writer.save(run, finish=finish)
        if not refused:
            return
        record = run.record
        note = f"values no store can hold were dropped: {describe_rejections(refused)}"
        step = record.steps.get(blame) if blame is not None else None
        if step is not None:
            step.error = f"{step.error}; {note}" if step.error else note
        else:
            record.error = f"{record.error}; {note}" if record.error else note
        refused = await self._writer.save(run, finish=finish)
        if refused:
            raise SagaDataError(
                f"saga '{record.saga_id}' cannot be stored even without "
                f"{describe_rejections(refused)}",
                rejections=refused,
                saga_id=record.saga_id,
            )

    async def _finish(self, run: SagaRun, status: SagaStatus) -> None:
        """Write the terminal status and announce it."""
        failure = run.record.failure
        await self._save_noting(run, failure.step if failure else None, finish=status)
        await self._announce(run)

    # ------------------------------------------------------------------ compensating

    async def _begin_compensation(self, run: SagaRun, failure: SagaFailure) -> None:
        """Record why the saga failed; compensate (always through ``COMPENSATING``)."""
        record = run.record
        record.error = failure.message
        record.failure = failure
        record.current_step = None
        if not run.config.enable_compensation:
            await self._finish(run, SagaStatus.FAILED)
            return
        move_saga(record, SagaStatus.COMPENSATING)
        await self._save_noting(run, failure.step)
        await self.events.publish(run, ev.SagaCompensating, error=failure.message)
        await self._compensate(run, poisoned=False)

    def _to_compensate(self, run: SagaRun) -> list[SagaStepRecord]:
        """Steps to compensate, latest completion first.

        Completed steps that have a compensation, and ``compensate_failed`` steps whose
        action failed (and whose compensation has not given up): those come first, as
        they ran last.
        """
        flow_steps = run.flow.steps
        todo = []
        for step in run.record.steps.values():
            node = flow_steps.get(step.step_name)
            if node is None or node.compensation is None:
                continue
            if step.status in (_COMPLETED, SagaStepStatus.COMPENSATING) or (
                step.status is _FAILED
                and node.compensate_failed
                and step.compensation_error is None
                and step.started_at is not None  # its action may have run
            ):
                todo.append(step)
        todo.sort(key=_undo_order, reverse=True)
        return todo

    async def _compensate(self, run: SagaRun, *, poisoned: bool) -> None:
        record = run.record
        todo = self._to_compensate(run)
        if not todo:
            await self._finish(run, self._settle(record))
            return
        for index, step in enumerate(todo):
            if poisoned and index == 0:
                move_step(step, _FAILED)
                step.compensation_error = poison_message(record)
            else:
                await self._run_compensation(run, run.flow.steps[step.step_name], step)
            last = index + 1 == len(todo)
            await self._save_noting(run, None, finish=self._settle(record) if last else None)
            if step.status is SagaStepStatus.COMPENSATED:
                await self.events.publish(run, ev.SagaStepCompensated, step.step_name)
        await self._announce(run)

    @staticmethod
    def _settle(record: SagaRecord) -> SagaStatus:
        """Decide how a compensated saga ends; record why when it ends ``FAILED``."""
        failed = [
            step.step_name
            for step in record.steps.values()
            if step.status is _FAILED and step.compensation_error is not None
        ]
        if not failed:
            return SagaStatus.COMPENSATED
        cause = record.error or "saga failed"
        names = ", ".join(f"'{name}'" for name in failed)
        record.error = f"compensation failed for step(s) {names}; cause: {cause}"
        record.failure = SagaFailure(
            "compensation_failed", failed[0], record.error, cause=record.failure
        )
        return SagaStatus.FAILED

    async def _run_compensation(self, run: SagaRun, node: FlowStep, step: SagaStepRecord) -> None:
        """Attempt a compensation (retried on any failure), shielded from cancel requests."""
        func = node.compensation
        assert func is not None  # filtered by _to_compensate
        if run.instance is BROKEN:
            move_step(step, _FAILED)
            step.compensation_error = "not run: the saga instance could not be built"
            return
        policy = node.compensation_policy
        ctx = run.ctx
        ctx.step_name = node.name
        ctx.compensating = True
        ctx.action_completed = step.completion_seq is not None
        ctx.use_key(node.name, max(step.visits, 1), compensation=True)
        move_step(step, SagaStepStatus.COMPENSATING)
        task = run.task
        assert task is not None  # set when the run's task starts
        while True:
            attempt = step.compensation_attempts + 1
            ctx.attempt = attempt
            non_retryable = run.config.non_retryable_exceptions
            if self.hooks is None:
                outcome = await attempt_once(
                    run, func, ctx, policy, task, non_retryable, forward=False
                )
            else:
                outcome = await attempt_observed(
                    self.hooks, run, func, ctx, policy, task, non_retryable, forward=False
                )
            step.compensation_attempts = attempt
            if outcome.ok:
                move_step(step, SagaStepStatus.COMPENSATED)
                step.compensated_at = self.clock()
                step.compensation_error = None
                return
            step.compensation_error = outcome.error
            if attempt > policy.max_retries:
                move_step(step, _FAILED)
                logger.warning(
                    "saga %s: compensation of step '%s' gave up after %d attempts",
                    run.record.saga_id,
                    node.name,
                    attempt,
                    extra=run.log_extra(node.name, attempt),
                )
                return
            await self._save_noting(run, None)
            delay = retry_backoff(policy.retry_delay, run.config).delay(attempt, self.rand)
            await self._pause(run, delay, task, forward=False)
