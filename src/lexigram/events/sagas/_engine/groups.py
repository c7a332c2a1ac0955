"""Parallel groups: a step whose children run concurrently (``asyncio.TaskGroup``).

Written as a base class of :class:`~lexigram.events.sagas._engine.engine.Engine` (it uses
the engine's step runner and commit), kept apart because it changes for its own reasons.
A child's stop (cancel, deadline, shutdown) is reported to the group instead of raised, so
that its siblings finish their attempt and their writes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lexigram.events.sagas._engine.flow import FlowStep
from lexigram.events.sagas._engine.run import Interrupted, SagaRun, StopReason
from lexigram.events.sagas._engine.steps import enter_step
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.types import SagaFailure, SagaStatus, SagaStepStatus, move_step

__all__ = ["Groups"]

_COMPLETED = SagaStepStatus.COMPLETED
_FAILED = SagaStepStatus.FAILED


class Groups:
    """Running a parallel group's children (a base of the engine)."""

    clock: Callable[[], datetime]

    async def _run_step(
        self, run: SagaRun, node: FlowStep, ctx: SagaContext, task: asyncio.Task[Any]
    ) -> SagaFailure | None:
        raise NotImplementedError

    async def _commit_step(
        self, run: SagaRun, node: FlowStep, finish: SagaStatus | None
    ) -> SagaFailure | None:
        raise NotImplementedError

    async def _run_group(
        self, run: SagaRun, node: FlowStep, ctx: SagaContext, task: asyncio.Task[Any]
    ) -> SagaFailure | None:
        """Run a parallel group's unfinished children concurrently; wait for all of them."""
        group = enter_step(run, node, self.clock())
        steps = run.record.steps
        pending = [
            child
            for child in node.children
            if not (
                (done := steps.get(child.name)) is not None
                and done.status is _COMPLETED
                and done.visits >= group.visits
            )
        ]
        run.save_lock()  # children save concurrently from here on
        stops: list[StopReason] = []
        failures: dict[str, SagaFailure] = {}
        async with asyncio.TaskGroup() as tasks:
            for child in pending:
                tasks.create_task(
                    self._run_child(run, child, ctx.for_step(child.name), stops, failures)
                )
        if stops:
            raise Interrupted(next((r for r in stops if r.is_hard), stops[0]))
        failed = [
            child.name for child in node.children if steps[child.name].status is not _COMPLETED
        ]
        if failed:
            move_step(group, _FAILED)
            group.error = "parallel step(s) failed: " + "; ".join(
                f"'{name}': {steps[name].error}" for name in failed
            )
            group.completed_at = self.clock()
            first = failures.get(failed[0])
            kind = first.kind if first is not None else "step_failed"
            return SagaFailure(kind, node.name, f"step '{node.name}' failed: {group.error}")
        output: dict[str, Any] = {}
        for child in node.children:
            output.update(steps[child.name].output)
        move_step(group, _COMPLETED)
        group.output = output
        group.completed_at = self.clock()
        group.completion_seq = run.seq
        run.seq += 1
        ctx.step_results[node.name] = output
        return None

    async def _run_child(
        self,
        run: SagaRun,
        child: FlowStep,
        ctx: SagaContext,
        stops: list[StopReason],
        failures: dict[str, SagaFailure],
    ) -> None:
        """Run one child of a group; report a stop instead of raising (siblings go on)."""
        task = asyncio.current_task()
        assert task is not None  # children run in TaskGroup tasks
        try:
            if child.is_group:
                failure = await self._run_group(run, child, ctx, task)
            else:
                failure = await self._run_step(run, child, ctx, task)
            if failure is None:
                failure = await self._commit_step(run, child, None)
            if failure is not None:
                failures[child.name] = failure
        except Interrupted as stop:
            stops.append(stop.reason)
