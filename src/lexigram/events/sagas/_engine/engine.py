"""The one execution engine: runs a compiled flow for one saga, from any persistence point.

Both front-ends hand the engine a :class:`~lexigram.events.sagas._engine.flow.Flow` and a stored
record; the engine does the rest: steps and parallel groups, conditional transitions,
retries with backoff, per-attempt timeouts, the saga deadline, persistence points,
compensation, cancellation, shutdown, leases and lifecycle events.

Persistence points (each one ``store.save``, i.e. one durable write):

- ``start()`` inserts the ``PENDING`` record, already leased to this worker;
- every step completion (with the context changes and the next step), the last one
  together with the terminal status;
- every failed attempt that will be retried (so attempts survive a crash);
- the failure that starts compensation (step ``FAILED``, saga ``COMPENSATING``);
- every compensation outcome, the last one together with the terminal status.

A 3-step saga that completes therefore costs 4 writes. Nothing is written before a step
starts: after a crash the step after the last durable point is the one that was in flight,
and it runs again (steps are at-least-once).

How a run is stopped: ``SagaRun.stop(reason)`` records the reason and cancels the tasks
that are awaiting user code (a step, a compensation, a retry delay) at that moment; code
that is persisting is never cancelled, it finishes its write and the next checkpoint sees
the reason. Cancel and deadline stop only forward steps (compensations are shielded);
shutdown and a lost lease stop everything, without writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lexigram.events._bus import EventBusProtocol
from lexigram.events.sagas import events as ev
from lexigram.events.sagas._engine.deadlines import DeadlineTimer
from lexigram.events.sagas._engine.flow import Flow, FlowStep, RetryPolicy, StepCallable
from lexigram.events.sagas._engine.rules import describe_error, interpret_result, retry_delay
from lexigram.events.sagas._engine.run import Interrupted, SagaRun, StopReason
from lexigram.events.sagas._engine.writer import RecordWriter
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import (
    SagaRecord,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
)

__all__ = ["Engine", "SagaRun", "StopReason"]

logger = logging.getLogger(__name__)

_RUNNING = SagaStepStatus.RUNNING
_COMPLETED = SagaStepStatus.COMPLETED
_FAILED = SagaStepStatus.FAILED


class Engine:
    """Runs flows against a store. Owned by one manager or orchestrator (one worker)."""

    def __init__(
        self,
        store: SagaStore,
        config: SagaConfig,
        *,
        event_bus: EventBusProtocol | None,
        worker_id: str,
        lease_id: str,
        clock: Callable[[], datetime],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.config = config
        self.bus = event_bus
        self.worker_id = worker_id
        self.lease_id = lease_id
        self.clock = clock
        self.rand = rand
        self.runs: dict[str, SagaRun] = {}
        self._writer = RecordWriter(store, config, clock)
        self._heartbeat: asyncio.Task[None] | None = None
        self._deadlines = DeadlineTimer(StopReason.DEADLINE, "saga deadline passed")

    # ------------------------------------------------------------------ launching

    def launch(
        self,
        record: SagaRecord,
        flow: Flow,
        *,
        stop: tuple[StopReason, str] | None = None,
        deadline_in: float | None = None,
    ) -> SagaRun:
        """Start running ``record`` (already stored and leased to this worker) in a task.

        ``deadline_in`` spares reading the clock when the caller knows how far away the
        saga's deadline is (a saga just started).
        """
        loop = asyncio.get_running_loop()
        run = SagaRun(record, flow)
        if stop is not None:
            run.stop(*stop)
        self.runs[record.saga_id] = run
        if record.deadline_at is not None:
            if deadline_in is None:
                deadline_in = (record.deadline_at - self.clock()).total_seconds()
            self._deadlines.add(loop, deadline_in, run)
        run.task = loop.create_task(self._run(run), name=f"saga:{record.saga_id}")
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = loop.create_task(self._beat(), name="saga-heartbeat")
        return run

    async def _run(self, run: SagaRun) -> None:
        record = run.record
        # Whether to hand the saga back on the way out. Not for a crash (a BaseException
        # such as SystemExit): like a dead process, it leaves the lease to expire.
        release = False
        try:
            run.instance = run.flow.make_instance()
            # Driving the run is written out here rather than in a helper coroutine: a
            # suspended saga keeps one frame less alive (memory per saga in flight).
            poisoned = record.recovery_attempts > self.config.max_recovery_attempts
            if record.status is SagaStatus.COMPENSATING:
                await self._compensate(run, poisoned=poisoned)
                return
            if record.status is SagaStatus.PENDING:
                record.status = SagaStatus.RUNNING
                if self.bus is not None:
                    await self._publish(run, ev.SagaStarted)
            error: str | None
            try:
                if poisoned:
                    error = self._poison_message(record)
                    self._fail_in_flight(run, error)
                    error = f"step '{record.current_step}' failed: {error}"
                else:
                    error = await self._forward(run)
                    if error is None:
                        return
            except Interrupted as stop:
                if stop.reason.is_hard:
                    raise
                error = self._stop_error(run)
                self._fail_in_flight(run, error)
            await self._begin_compensation(run, error)
        except Interrupted as stop:
            logger.info("saga %s stopped (%s); it stays resumable", record.saga_id, stop.reason)
            release = stop.reason is not StopReason.LEASE_LOST
        except asyncio.CancelledError:
            logger.info("saga %s task cancelled; it stays resumable", record.saga_id)
            release = True
            raise
        except Exception:
            # An engine, store or factory failure, never a step failure: leave the saga as
            # stored so any worker can recover it, and say why.
            logger.exception("saga %s could not continue; it stays resumable", record.saga_id)
            release = True
        finally:
            del self.runs[record.saga_id]
            if release and not run.finished:
                await self._release(record)
            run.finish(None)
            if record.deadline_at is not None:
                self._deadlines.finished()

    async def _release(self, record: SagaRecord) -> None:
        try:
            await self.store.release(record.saga_id, self.worker_id, self.lease_id)
        except Exception:
            logger.warning("could not release lease of saga %s", record.saga_id, exc_info=True)

    # ------------------------------------------------------------------ driving a run

    @staticmethod
    def _poison_message(record: SagaRecord) -> str:
        return (
            "the saga kept crashing its worker: taken over "
            f"{record.recovery_attempts} times without progress"
        )

    def _stop_error(self, run: SagaRun) -> str:
        if run.stop_reason is StopReason.DEADLINE:
            return (
                f"saga timed out: its deadline of {self.config.default_timeout_seconds:g}s passed"
            )
        return f"saga cancelled: {run.stop_message or 'cancelled'}"

    def _fail_in_flight(self, run: SagaRun, error: str) -> None:
        """Mark the steps that were running (or about to run) as failed with ``error``."""
        running = [step for step in run.record.steps.values() if step.status is _RUNNING]
        name = run.record.current_step
        if not running and name is not None and name in run.flow.steps:
            step = run.record.steps.get(name)
            if step is None or step.status is not _COMPLETED:
                self._record_failure(run, run.flow.steps[name], error)
        for step in running:
            step.status = _FAILED
            step.error = error
            step.completed_at = self.clock()

    async def _forward(self, run: SagaRun) -> str | None:
        """Run steps from ``current_step``; return ``None`` when completed, else the error."""
        record = run.record
        flow = run.flow
        task = run.task
        assert task is not None  # set when the run's task starts
        max_transitions = self.config.max_transitions
        while True:
            name = record.current_step
            if name is None:  # every step done; only the terminal write was missing
                await self._finish(run, SagaStatus.COMPLETED, None)
                return None
            run.checkpoint(forward=True)
            node = flow.steps[name]
            if record.transitions >= max_transitions:
                # The step is not entered: an earlier, completed visit of it stays
                # completed and is compensated like any other.
                return (
                    f"the flow exceeded max_transitions ({max_transitions}) "
                    f"before entering step '{name}'"
                )
            record.transitions += 1
            if node.is_group:
                ok, error = await self._run_group(run, node, run.ctx, task)
            else:
                ok, error = await self._run_step(run, node, run.ctx, task)
            if ok:
                nxt, error = self._next_step(run, node)
                if error:
                    # The step's action completed (it stays COMPLETED and is compensated);
                    # the flow cannot go on from it.
                    failure = error
                else:
                    record.current_step = nxt
                    if nxt is None:
                        self._set_terminal(record, SagaStatus.COMPLETED, None)
                    if await self._commit_step(run, node, terminal=nxt is None):
                        if nxt is None:
                            await self._announce(run)
                            return None
                        continue
                    record.current_step = name
                    failure = f"step '{name}' failed: {record.steps[name].error or ''}"
            else:
                failure = f"step '{name}' failed: {error}"
            if node.on_failure is not None:
                record.current_step = node.on_failure
                await self._writer.save(run)
                continue
            return failure

    def _next_step(self, run: SagaRun, node: FlowStep) -> tuple[str | None, str]:
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
        if not isinstance(chosen, str) or chosen not in run.flow.steps:
            return None, f"the transition after step '{node.name}' returned unknown step {chosen!r}"
        if run.flow.steps[chosen].parent is not None:
            return None, (
                f"the transition after step '{node.name}' returned '{chosen}', a child of a "
                "parallel group"
            )
        return chosen, ""

    def _record_failure(self, run: SagaRun, node: FlowStep, error: str) -> None:
        step = run.record.steps.get(node.name)
        if step is None:
            step = run.record.steps[node.name] = SagaStepRecord(node.name, parent=node.parent)
        step.status = _FAILED
        step.error = error
        step.completion_seq = None
        step.completed_at = self.clock()
        run.ctx.step_results.pop(node.name, None)

    def _enter(self, run: SagaRun, node: FlowStep) -> SagaStepRecord:
        """Return the step's record, starting a new visit unless one is in progress."""
        record = run.record
        step = record.steps.get(node.name)
        if step is None:
            step = record.steps[node.name] = SagaStepRecord(node.name, parent=node.parent)
        if step.status is not _RUNNING or step.visits == 0:
            step.visits += 1
            step.attempts = 0
            step.attempt_errors = []
            step.error = None
            step.completion_seq = None
            step.completed_at = None
            step.started_at = self.clock()
            step.status = _RUNNING
        return step

    async def _run_step(
        self, run: SagaRun, node: FlowStep, ctx: SagaContext, task: asyncio.Task[Any]
    ) -> tuple[bool, str]:
        """Attempt one step until it succeeds, fails for good, or the run is stopped."""
        step = self._enter(run, node)
        policy = node.policy
        name = node.name
        ctx.step_name = name
        ctx.compensating = False
        key = f"{run.record.saga_id}:{name}"
        ctx.idempotency_key = key if step.visits == 1 else f"{key}:{step.visits}"
        action = node.action
        assert action is not None  # validated at definition time
        while True:
            attempt = step.attempts + 1
            ctx.attempt = attempt
            ok, output, error, retryable = await self._attempt(
                run, action, ctx, policy, name, task, forward=True
            )
            step.attempts = attempt
            if ok:
                step.status = _COMPLETED
                step.output = output
                step.completed_at = self.clock()
                step.completion_seq = run.seq
                run.seq += 1
                ctx.step_results[name] = output
                return True, ""
            step.attempt_errors.append(error)
            step.error = error
            will_retry = retryable and attempt <= policy.max_retries
            await self._publish(
                run, ev.SagaStepFailed, name, attempt=attempt, error=error, will_retry=will_retry
            )
            if not will_retry:
                step.status = _FAILED
                step.completed_at = self.clock()
                return False, error
            await self._writer.save(run)
            delay = retry_delay(attempt, policy, self.config, self.rand)
            await self._pause(run, delay, task, forward=True)

    async def _attempt(
        self,
        run: SagaRun,
        func: StepCallable,
        ctx: SagaContext,
        policy: RetryPolicy,
        name: str,
        task: asyncio.Task[Any],
        *,
        forward: bool,
    ) -> tuple[bool, dict[str, Any], str, bool]:
        """Run one attempt of a step or compensation: ``(ok, output, error, retryable)``.

        The user code is awaited right here (no task, no wrapper coroutine: this is the hot
        path), registered so that ``SagaRun.stop`` can interrupt it.
        """
        run.checkpoint(forward=forward)
        timeout = policy.timeout
        in_user_code = run.in_user_code
        in_user_code[task] = forward
        try:
            if timeout is None:
                raw = await func(run.instance, ctx)
            else:
                async with asyncio.timeout(timeout):
                    try:
                        raw = await func(run.instance, ctx)
                    except TimeoutError as own:  # raised by the step, not by our timeout
                        raise _StepTimeoutError(describe_error(own)) from own
        except asyncio.CancelledError:
            if run.owns_cancel(task):
                raise Interrupted(run.stop_reason or StopReason.SHUTDOWN) from None
            raise
        except _StepTimeoutError as exc:
            return False, {}, str(exc), True
        except TimeoutError as exc:
            if timeout is None:  # the step's own TimeoutError: a transient failure
                return False, {}, describe_error(exc), True
            error = f"SagaTimeoutError: step '{name}' attempt timed out after {timeout:g}s"
            return False, {}, error, True
        except Exception as exc:
            retryable = not isinstance(exc, self.config.non_retryable_exceptions)
            return False, {}, describe_error(exc), retryable
        finally:
            del in_user_code[task]
        if run.cancelled_tasks and task in run.cancelled_tasks:
            await run.absorb_late_cancel(task)
        return interpret_result(raw, name)

    async def _pause(
        self, run: SagaRun, seconds: float, task: asyncio.Task[Any], *, forward: bool
    ) -> None:
        if seconds > 0:
            await run.call_user(asyncio.sleep(seconds), task, forward=forward)
        run.checkpoint(forward=forward)

    async def _run_group(
        self, run: SagaRun, node: FlowStep, ctx: SagaContext, task: asyncio.Task[Any]
    ) -> tuple[bool, str]:
        """Run a parallel group's unfinished children concurrently; wait for all of them."""
        group = self._enter(run, node)
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
        async with asyncio.TaskGroup() as tasks:
            for child in pending:
                tasks.create_task(self._run_child(run, child, ctx.for_step(child.name), stops))
        if stops:
            raise Interrupted(next((r for r in stops if r.is_hard), stops[0]))
        failed = [
            child.name for child in node.children if steps[child.name].status is not _COMPLETED
        ]
        if failed:
            group.status = _FAILED
            group.error = "parallel step(s) failed: " + "; ".join(
                f"'{name}': {steps[name].error}" for name in failed
            )
            group.completed_at = self.clock()
            return False, group.error
        output: dict[str, Any] = {}
        for child in node.children:
            output.update(steps[child.name].output)
        group.status = _COMPLETED
        group.output = output
        group.completed_at = self.clock()
        group.completion_seq = run.seq
        run.seq += 1
        ctx.step_results[node.name] = output
        return True, ""

    async def _run_child(
        self, run: SagaRun, child: FlowStep, ctx: SagaContext, stops: list[StopReason]
    ) -> None:
        """Run one child of a group; report a stop instead of raising (siblings go on)."""
        task = asyncio.current_task()
        assert task is not None  # children run in TaskGroup tasks
        try:
            if child.is_group:
                ok, _ = await self._run_group(run, child, ctx, task)
            else:
                ok, _ = await self._run_step(run, child, ctx, task)
            if ok:
                await self._commit_step(run, child, terminal=False)
        except Interrupted as stop:
            stops.append(stop.reason)

    async def _commit_step(self, run: SagaRun, node: FlowStep, *, terminal: bool) -> bool:
        """Persist a step's completion; an output or context JSON cannot hold fails the step."""
        rejected = await self._writer.save(run, terminal=terminal, commit=True)
        if not rejected:
            if self.bus is not None:
                await self._publish(run, ev.SagaStepCompleted, node.name, attempt=run.ctx.attempt)
            return True
        if terminal:
            run.record.status = SagaStatus.RUNNING
            run.record.completed_at = None
        keys = ", ".join(f"'{key}'" for key in rejected)
        self._record_failure(
            run,
            node,
            f"SagaDataError: step '{node.name}' stored a value that is not JSON-serialisable "
            f"at {keys}",
        )
        return False

    # ------------------------------------------------------------------ compensation

    async def _begin_compensation(self, run: SagaRun, error: str) -> None:
        record = run.record
        record.error = error
        record.current_step = None
        if not self.config.enable_compensation:
            await self._finish(run, SagaStatus.FAILED, error)
            return
        if not self._to_compensate(run):
            await self._finish(run, SagaStatus.COMPENSATED, error)
            return
        record.status = SagaStatus.COMPENSATING
        await self._writer.save(run)
        await self._publish(run, ev.SagaCompensating, error=error)
        await self._compensate(run, poisoned=False)

    def _to_compensate(self, run: SagaRun) -> list[SagaStepRecord]:
        """Completed steps that have a compensation, latest completion first."""
        flow_steps = run.flow.steps
        todo = [
            step
            for step in run.record.steps.values()
            if step.status in (_COMPLETED, SagaStepStatus.COMPENSATING)
            and step.step_name in flow_steps
            and flow_steps[step.step_name].compensation is not None
        ]
        todo.sort(key=lambda step: step.completion_seq or 0, reverse=True)
        return todo

    async def _compensate(self, run: SagaRun, *, poisoned: bool) -> None:
        record = run.record
        todo = self._to_compensate(run)
        for index, step in enumerate(todo):
            if poisoned and index == 0:
                step.status = _FAILED
                step.compensation_error = self._poison_message(record)
            else:
                await self._run_compensation(run, run.flow.steps[step.step_name], step)
            last = index + 1 == len(todo)
            if last:
                self._set_terminal(record, *self._compensation_outcome(record))
            await self._writer.save(run, terminal=last)
            if step.status is SagaStepStatus.COMPENSATED:
                await self._publish(run, ev.SagaStepCompensated, step.step_name)
        if not todo:
            await self._finish(run, *self._compensation_outcome(record))
        else:
            await self._announce(run)

    @staticmethod
    def _compensation_outcome(record: SagaRecord) -> tuple[SagaStatus, str]:
        failed = [
            step.step_name
            for step in record.steps.values()
            if step.status is _FAILED and step.compensation_error is not None
        ]
        cause = record.error or "saga failed"
        if not failed:
            return SagaStatus.COMPENSATED, cause
        names = ", ".join(f"'{name}'" for name in failed)
        return SagaStatus.FAILED, f"compensation failed for step(s) {names}; cause: {cause}"

    async def _run_compensation(self, run: SagaRun, node: FlowStep, step: SagaStepRecord) -> None:
        """Attempt a compensation (retried on any failure), shielded from cancel requests."""
        func = node.compensation
        assert func is not None  # filtered by _to_compensate
        policy = node.compensation_policy
        ctx = run.ctx
        ctx.step_name = node.name
        ctx.compensating = True
        key = f"{run.record.saga_id}:{node.name}:compensate"
        ctx.idempotency_key = key if step.visits <= 1 else f"{key}:{step.visits}"
        step.status = SagaStepStatus.COMPENSATING
        task = run.task
        assert task is not None  # set when the run's task starts
        while True:
            attempt = step.compensation_attempts + 1
            ctx.attempt = attempt
            ok, _, error, _ = await self._attempt(
                run, func, ctx, policy, node.name, task, forward=False
            )
            step.compensation_attempts = attempt
            if ok:
                step.status = SagaStepStatus.COMPENSATED
                step.compensated_at = self.clock()
                step.compensation_error = None
                return
            step.compensation_error = error
            if attempt > policy.max_retries:
                step.status = _FAILED
                logger.warning(
                    "saga %s: compensation of step '%s' gave up after %d attempts",
                    run.record.saga_id,
                    node.name,
                    attempt,
                )
                return
            await self._writer.save(run)
            delay = retry_delay(attempt, policy, self.config, self.rand)
            await self._pause(run, delay, task, forward=False)

    # ------------------------------------------------------------------ persistence

    def _set_terminal(self, record: SagaRecord, status: SagaStatus, error: str | None) -> None:
        record.status = status
        record.error = error
        record.current_step = None
        record.completed_at = self.clock()

    async def _finish(self, run: SagaRun, status: SagaStatus, error: str | None) -> None:
        """Write the terminal status and announce it."""
        self._set_terminal(run.record, status, error)
        await self._writer.save(run, terminal=True)
        await self._announce(run)

    async def _announce(self, run: SagaRun) -> None:
        """Publish the terminal event and wake the waiters (the record is durable now)."""
        record = run.record
        if self.bus is None:
            pass
        elif record.status is SagaStatus.COMPLETED:
            await self._publish(run, ev.SagaCompleted)
        elif record.status is SagaStatus.COMPENSATED:
            await self._publish(run, ev.SagaCompensated, error=record.error or "")
        else:
            await self._publish(run, ev.SagaFailed, error=record.error or "")
        run.finish(record)

    # ------------------------------------------------------------------ leases and events

    async def _beat(self) -> None:
        """Renew the leases of every running saga; end when a tick finds none running."""
        interval = self.config.lease_seconds / 3
        try:
            while True:
                await asyncio.sleep(interval)
                ids = list(self.runs)
                if not ids:
                    break
                try:
                    held = set(
                        await self.store.renew(
                            self.worker_id,
                            self.lease_id,
                            ids,
                            lease_seconds=self.config.lease_seconds,
                        )
                    )
                except Exception:
                    logger.warning("lease renewal failed; retrying", exc_info=True)
                    continue
                for saga_id in ids:
                    run = self.runs.get(saga_id)
                    if saga_id not in held and run is not None and not run.record.is_terminal:
                        logger.warning("saga %s: lease lost to another worker", saga_id)
                        run.stop(StopReason.LEASE_LOST)
        finally:
            self._heartbeat = None

    async def close(self) -> None:
        """Stop the heartbeat and deadline timer (runs must be finished or stopped)."""
        self._deadlines.close()
        beat = self._heartbeat
        if beat is not None:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _publish(
        self,
        run: SagaRun,
        event_type: type[ev.SagaEvent],
        step_name: str | None = None,
        **fields: Any,
    ) -> None:
        bus = self.bus
        if bus is None:
            return
        record = run.record
        try:
            event = event_type(
                saga_id=record.saga_id,
                saga_name=record.saga_name,
                correlation_id=record.correlation_id,
                step_name=step_name,
                **fields,
            )
            await bus.publish(event)
        except Exception:  # a failing bus never breaks a saga
            logger.warning(
                "saga %s: publishing %s failed", record.saga_id, event_type.__name__, exc_info=True
            )


class _StepTimeoutError(TimeoutError):
    """A ``TimeoutError`` raised by the step itself (not by its attempt timeout)."""
