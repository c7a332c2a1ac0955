"""The one execution engine: runs a compiled flow for one saga, from any persistence point.

Both front-ends hand the engine a :class:`~lexigram.events.sagas._engine.flow.Flow` and a
stored record; the engine does the rest: steps and parallel groups, conditional
transitions, retries with backoff, per-attempt timeouts, the saga deadline, persistence
points, compensation (``compensation.py``), cancellation, shutdown, leases and events.

Persistence points (each one ``store.save``, i.e. one durable write):

- ``start()`` inserts the ``PENDING`` record, already leased to this worker;
- every step completion (with the context changes and the next step), the last one
  together with the terminal status;
- every failed attempt that will be retried (so attempts survive a crash);
- the failure that starts compensation (step ``FAILED``, saga ``COMPENSATING``);
- every compensation outcome, the last one together with the terminal status.

A 3-step saga that completes therefore costs 4 writes. Nothing is written before a step
starts: after a crash the step after the last durable point is the one that was in flight,
and it runs again (steps are at-least-once). Events are published only once the state
they announce is durable (``SagaStarted`` with the first write after the run began).

How a run is stopped: ``SagaRun.stop(reason)`` records the reason and cancels the tasks
that are awaiting user code (a step, a compensation, a retry delay) at that moment; code
that is persisting is never cancelled, it finishes its write and the next checkpoint sees
the reason. Cancel and deadline stop only forward steps (compensations are shielded);
shutdown and a lost lease stop everything, without writing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from lexigram.events._bus import EventBusProtocol
from lexigram.events.sagas import events as ev
from lexigram.events.sagas._engine.announce import Announcer
from lexigram.events.sagas._engine.attempt import attempt_once
from lexigram.events.sagas._engine.backoff import retry_backoff
from lexigram.events.sagas._engine.compensation import Compensation, poison_message, seconds_between
from lexigram.events.sagas._engine.deadlines import DeadlineTimer
from lexigram.events.sagas._engine.flow import Flow, FlowStep
from lexigram.events.sagas._engine.groups import Groups
from lexigram.events.sagas._engine.heartbeat import Heartbeat
from lexigram.events.sagas._engine.hooks import EngineHooks, attempt_observed
from lexigram.events.sagas._engine.rules import describe_error
from lexigram.events.sagas._engine.run import (
    BROKEN,
    Interrupted,
    SagaRun,
    StopReason,
    collect_task,
)
from lexigram.events.sagas._engine.steps import (
    check_child,
    enter_step,
    fail_in_flight,
    fail_step,
    next_step,
)
from lexigram.events.sagas._engine.waits import Parked, Waits
from lexigram.events.sagas._engine.writer import RecordWriter, describe_rejections
from lexigram.events.sagas._leases import LeasePolicy
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, storable_text
from lexigram.events.sagas.errors import SagaError
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import (
    SagaFailure,
    SagaRecord,
    SagaStatus,
    SagaStepStatus,
    move_saga,
    move_step,
)

__all__ = ["Engine", "SagaRun", "StopReason"]

logger = logging.getLogger(__name__)

_RUNNING = SagaStepStatus.RUNNING
_COMPLETED = SagaStepStatus.COMPLETED
_FAILED = SagaStepStatus.FAILED


class Engine(Compensation, Waits, Groups):
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
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.config = config
        self.bus = event_bus
        self.worker_id = worker_id
        self.lease_id = lease_id
        self.clock = clock
        self.rand = rand
        self.sleep = sleep
        self.lease = LeasePolicy(config.lease_seconds)
        self.runs: dict[str, SagaRun] = {}
        self.closed = False
        self.on_run_end: Callable[[], None] | None = None
        """Called each time a run leaves ``runs`` (a serving worker has a free slot)."""
        self.events = Announcer(event_bus, worker_id)
        self._writer = RecordWriter(
            store, config, clock, self.lease, sleep=sleep, publish=self.events.emit
        )
        self._heartbeat = Heartbeat(
            store,
            self.lease,
            worker_id=worker_id,
            lease_id=lease_id,
            runs=self.runs,
            on_done=collect_task,
        )
        self._deadlines = DeadlineTimer(StopReason.DEADLINE, "saga deadline passed")
        self.hooks: EngineHooks | None = None
        """An observer (tracing, metrics) told of runs and attempts; see ``hooks.py``."""

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

        Raises:
            SagaError: the engine is closed (its worker is shutting down).
        """
        if self.closed:
            raise SagaError("this saga manager is closed", saga_id=record.saga_id)
        running = self.runs.get(record.saga_id)
        if running is not None:  # never two runs of one saga in one worker
            return running
        loop = asyncio.get_running_loop()
        run = SagaRun(record, flow, self.worker_id, self.config)
        if stop is None and record.cancel_requested_at is not None:  # asked from anywhere
            stop = (StopReason.CANCEL, record.cancel_reason or "cancelled by request")
        if stop is not None:
            run.stop(*stop)
        self.runs[record.saga_id] = run
        if record.deadline_at is None:  # enqueued: the deadline counts from its first run
            deadline_in = run.config.default_timeout_seconds
            record.deadline_at = self.clock() + timedelta(seconds=deadline_in)
        if record.deadline_at is not None:
            if deadline_in is None:
                deadline_in = (record.deadline_at - self.clock()).total_seconds()
            self._deadlines.add(loop, deadline_in, run)
        run.task = loop.create_task(self._run(run), name=f"saga:{record.saga_id}")
        self._heartbeat.ensure(loop)
        return run

    async def _run(self, run: SagaRun) -> None:
        record = run.record
        # Whether to hand the saga back on the way out. Not for a crash (a BaseException
        # such as SystemExit): like a dead process, it leaves the lease to expire.
        release = False
        try:
            # Driving the run is written out here rather than in a helper coroutine: a
            # suspended saga keeps one frame less alive (memory per saga in flight).
            broken = self._build_instance(run)
            poisoned = record.recovery_attempts > run.config.max_recovery_attempts
            if self.hooks is not None:
                self.hooks.run_begins(run)
            if self.bus is not None:
                await self.events.launched(run)
            if record.status is SagaStatus.COMPENSATING:
                await self._compensate(run, poisoned=poisoned)
                return
            if record.status is SagaStatus.PENDING:
                move_saga(record, SagaStatus.RUNNING)
            try:
                failure = broken or (self._poison(run) if poisoned else await self._forward(run))
                if failure is None:
                    return
            except Interrupted as stop:
                if stop.reason.is_hard:
                    raise
                failure = self._stop_failure(run)
                fail_in_flight(run, failure.message, self.clock())
            await self._begin_compensation(run, failure)
        except Parked:
            pass  # the saga waits, stored and free: nothing more to do here
        except Interrupted as stop:
            logger.info(
                "saga %s stopped (%s); it stays resumable",
                record.saga_id,
                stop.reason.value,
                extra=run.log_extra(),
            )
            release = stop.reason is not StopReason.LEASE_LOST
        except asyncio.CancelledError:
            logger.info(
                "saga %s task cancelled; stays resumable", record.saga_id, extra=run.log_extra()
            )
            release = True
            raise
        except Exception:
            # An engine or store failure, never a step failure: leave the saga as stored
            # so any worker can recover it, and say why.
            logger.exception("saga %s could not continue", record.saga_id, extra=run.log_extra())
            release = True
        except BaseException:
            # The process is going down inside this task (SystemExit, a simulated crash):
            # read the task's exception once it ends (rare, so no callback on every run).
            if run.task is not None:
                run.task.add_done_callback(collect_task)
            raise
        finally:
            # Released before it leaves ``runs``: a saga this worker holds is always either
            # running here or free (recovery relies on it to spot stranded sagas).
            if release and not run.finished:
                await self._release(run)
            del self.runs[record.saga_id]
            if self.hooks is not None:
                self.hooks.run_ends(run, _outcome(record))
            run.finish(None)
            if self.on_run_end is not None:
                self.on_run_end()
            if record.deadline_at is not None:
                self._deadlines.finished()

    def _poison(self, run: SagaRun) -> SagaFailure:
        """Fail the step in flight of a saga that kept crashing its worker."""
        message = poison_message(run.record)
        fail_in_flight(run, message, self.clock())
        name = run.record.current_step
        return SagaFailure("crash_loop", name, f"step '{name}' failed: {message}")

    def _build_instance(self, run: SagaRun) -> SagaFailure | None:
        """Build the saga object for this run; a factory that raises fails the saga."""
        try:
            run.instance = run.flow.make_instance()
        except Exception as exc:
            run.instance = BROKEN
            message = f"the saga could not be built: its factory raised {describe_error(exc)}"
            logger.exception("saga %s: %s", run.record.saga_id, message, extra=run.log_extra())
            return SagaFailure("step_error", None, message)
        return None

    async def _release(self, run: SagaRun) -> None:
        try:
            await self.store.release(run.record.saga_id, self.worker_id, self.lease_id)
        except Exception:
            logger.warning(
                "could not release lease of saga %s",
                run.record.saga_id,
                exc_info=True,
                extra=run.log_extra(),
            )

    # ------------------------------------------------------------------ driving a run

    def _stop_failure(self, run: SagaRun) -> SagaFailure:
        step = run.record.current_step
        if run.stop_reason is StopReason.DEADLINE:
            message = (
                f"saga timed out: its deadline of {run.config.default_timeout_seconds:g}s passed"
            )
            return SagaFailure("deadline", step, message)
        reason = storable_text(run.stop_message or "cancelled")
        return SagaFailure("cancelled", step, f"saga cancelled: {reason}")

    async def _forward(self, run: SagaRun) -> SagaFailure | None:
        """Run steps from ``current_step``; return ``None`` when completed, else why not."""
        record = run.record
        flow = run.flow
        task = run.task
        assert task is not None  # set when the run's task starts
        max_transitions = run.config.max_transitions
        while True:
            name = record.current_step
            if name is None:  # every step done; only the terminal write was missing
                await self._finish(run, SagaStatus.COMPLETED)
                return None
            run.checkpoint(forward=True)
            node = flow.steps[name]
            if record.transitions >= max_transitions:
                # The step is not entered: an earlier, completed visit of it stays
                # completed and is compensated like any other.
                return SagaFailure(
                    "transition",
                    name,
                    f"the flow exceeded max_transitions ({max_transitions}) "
                    f"before entering step '{name}'",
                )
            record.transitions += 1
            if node.is_group:
                failure = await self._run_group(run, node, run.ctx, task)
            else:
                failure = await self._run_step(run, node, run.ctx, task)
            if failure is None:
                nxt = node.next
                problem = ""
                if nxt is not None and type(nxt) is not str:  # a transition function
                    nxt, problem = next_step(run, node)
                if problem:
                    # The step's action completed (it stays COMPLETED and is compensated);
                    # the flow cannot go on from it.
                    failure = SagaFailure("transition", name, problem)
                else:
                    record.current_step = nxt
                    finish = SagaStatus.COMPLETED if nxt is None else None
                    failure = await self._commit_step(run, node, finish)
                    if failure is None:
                        if nxt is None:
                            await self._announce(run)
                            return None
                        continue
                    record.current_step = name
            if node.on_failure is not None:
                record.current_step = node.on_failure
                await self._save_noting(run, name)
                continue
            return failure

    async def _run_step(
        self, run: SagaRun, node: FlowStep, ctx: SagaContext, task: asyncio.Task[Any]
    ) -> SagaFailure | None:
        """Attempt one step until it succeeds (``None``), fails for good, or is stopped."""
        step = enter_step(run, node, self.clock())
        policy = node.policy
        name = node.name
        ctx.step_name = name
        ctx.compensating = False
        ctx.use_key(name, step.visits, compensation=False)
        action = node.action
        assert action is not None  # validated at definition time
        non_retryable = run.config.non_retryable_exceptions
        if node.wait is not None:
            waited = await self._gate(run, node, step)  # raises Parked while it waits
            if waited is not None:
                return waited
        elif ctx.signal is not None:
            ctx.signal = None
        hooks = self.hooks
        while True:
            attempt = step.attempts + 1
            ctx.attempt = attempt
            if self.bus is not None:
                await self.events.publish(run, ev.SagaStepStarted, name, attempt=attempt)
            if hooks is None:
                outcome = await attempt_once(
                    run, action, ctx, policy, task, non_retryable, forward=True
                )
            else:
                outcome = await attempt_observed(
                    hooks, run, action, ctx, policy, task, non_retryable, forward=True
                )
            if outcome.poll is not None and ctx is run.ctx:  # retry_after: not an attempt
                return await self._poll(run, node, step, outcome.poll)
            step.attempts = attempt
            if ctx is not run.ctx:  # a parallel child: what it stored is checked as its own
                outcome = check_child(run, ctx, outcome)
            if outcome.ok:
                step.status = _COMPLETED  # RUNNING -> COMPLETED (entered above): allowed
                step.output = outcome.output
                step.completed_at = self.clock()
                step.completion_seq = run.seq
                run.seq += 1
                ctx.step_results[name] = outcome.output
                return None
            error = outcome.error
            kind = outcome.kind or "step_error"
            step.attempt_errors.append(error)
            step.error = error
            if outcome.retryable and attempt <= policy.max_retries:
                retrying = self.events.queue(
                    run, ev.SagaStepFailed, name, attempt=attempt, error=error, will_retry=True
                )
                refused = await self._writer.save(run)
                if not refused:
                    delay = retry_backoff(policy.retry_delay, run.config).delay(attempt, self.rand)
                    await self._pause(run, delay, task, forward=True)
                    continue
                if retrying in run.outbox:
                    run.outbox.remove(retrying)  # it will not be retried after all
                error = step.error = self._refused_error(name, refused)
                kind = "step_error"
            self.events.queue(
                run, ev.SagaStepFailed, name, attempt=attempt, error=error, will_retry=False
            )
            move_step(step, _FAILED)
            step.completed_at = self.clock()
            return SagaFailure(kind, name, f"step '{name}' failed: {error}")

    @staticmethod
    def _refused_error(name: str, refused: tuple[Any, ...]) -> str:
        return (
            f"SagaDataError: step '{name}' stored values no store can hold: "
            f"{describe_rejections(refused)}"
        )

    async def _commit_step(
        self, run: SagaRun, node: FlowStep, finish: SagaStatus | None
    ) -> SagaFailure | None:
        """Persist a step's completion; a value no store can hold fails the step instead."""
        refused = await self._writer.save(run, finish=finish)
        if not refused:
            if self.bus is not None:  # checked here: the event is not even built without
                step = run.record.steps[node.name]
                await self.events.publish(
                    run,
                    ev.SagaStepCompleted,
                    node.name,
                    attempt=step.attempts,
                    duration_seconds=seconds_between(step.started_at, step.completed_at),
                )
            return None
        error = self._refused_error(node.name, refused)
        fail_step(run, node, error, self.clock())
        self.events.queue(
            run,
            ev.SagaStepFailed,
            node.name,
            attempt=run.record.steps[node.name].attempts,
            error=error,
            will_retry=False,
        )
        return SagaFailure("step_error", node.name, f"step '{node.name}' failed: {error}")

    # ------------------------------------------------------------------ leases and events

    async def check_cancel_requests(self) -> None:
        """Stop the runs of this worker that some process asked to cancel."""
        await self._heartbeat.check_cancel_requests()

    async def close(self) -> None:
        """Stop the heartbeat and deadline timer (runs must be finished or stopped)."""
        self.closed = True
        self._deadlines.close()
        await self._heartbeat.close()


def _outcome(record: SagaRecord) -> str:
    """How a run ended, for the hooks: the terminal status, parked, or stopped."""
    if record.is_terminal:
        return record.status.value
    return "parked" if record.waiting is not None else "stopped"
