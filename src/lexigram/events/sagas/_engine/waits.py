"""Durable waits: a step that waits for a signal, runs after a delay, or polls.

A waiting saga *parks*: one write stores what it waits for (``record.waiting``) and when a
worker should look at it next (``not_before``: the wait's end, or the saga's deadline if
that comes first), and hands the lease back. The run then ends and holds nothing. A
serving worker claims the saga when it is due, when its signal arrives (``send_signal``
makes it due at once) or when it is asked to cancel; the step is entered again and
:meth:`Waits._gate` decides: run now (with the signal in ``ctx.signal``), park again, or
fail with ``failure.kind == "timeout"``.

Exactly one outcome wins a race between a signal and a timeout: only the lease holder
decides, from what is stored. A signal counts when the store accepted it no later than
the timeout; a later one stays unconsumed.

A signal can arrive while a worker holds the saga, before its step parks: the store then
cannot make the saga due (it is not free yet). So after every park the engine looks for
such a signal and, finding one, makes the saga due itself (``store.wake``); the store
guarantees one of the two sees the other.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from lexigram.events.sagas import events as ev
from lexigram.events.sagas._engine.announce import Announcer
from lexigram.events.sagas._engine.flow import FlowStep, WaitPolicy
from lexigram.events.sagas._engine.run import SagaRun
from lexigram.events.sagas._engine.writer import RecordWriter, describe_rejections
from lexigram.events.sagas.errors import Rejection
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import (
    FailureKind,
    SagaFailure,
    SagaSignal,
    SagaStepRecord,
    SagaStepStatus,
    SagaWait,
    WaitKind,
    move_step,
)

__all__ = ["PARKED_FOREVER", "Parked", "Waits"]

PARKED_FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
"""The ``not_before`` of a saga waiting with neither a timeout nor a deadline."""


class Parked(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Unwinds a run whose saga just parked: its lease is handed back, nothing more runs."""


class Waits:
    """Gating waiting steps and parking sagas (a base of the engine)."""

    store: SagaStore
    clock: Callable[[], datetime]
    events: Announcer
    _writer: RecordWriter

    async def _gate(self, run: SagaRun, node: FlowStep, step: SagaStepRecord) -> SagaFailure | None:
        """Before a waiting step's attempt: ``None`` to run it now, else why it failed.

        Raises:
            Parked: the saga parked (its delay has not passed, its signal has not come,
                or it was woken before its next poll).
        """
        policy = node.wait
        assert policy is not None  # only waiting steps come here
        now = self.clock()
        start = step.started_at or now
        ready = start if policy.delay is None else start + timedelta(seconds=policy.delay)
        if now < ready:
            return await self._park(run, node, "delay", ready, since=start)
        expires = None if policy.timeout is None else ready + timedelta(seconds=policy.timeout)
        resumed, run.resumed = run.resumed, None
        if (
            resumed is not None
            and resumed.step == node.name
            and resumed.kind == "poll"
            and resumed.until is not None
            and now < resumed.until
        ):  # woken before its next poll (a manual wake)
            return await self._park(run, node, "poll", resumed.until, since=resumed.since)
        if policy.signal is None:
            return None
        signal = await self._take_signal(run, node, step, policy, expires)
        if signal is None:
            if expires is not None and now >= expires:
                return self._timed_out(run, node, step, policy)
            return await self._park(run, node, "signal", expires, since=ready)
        run.ctx.signal = signal.payload
        return None

    async def _poll(
        self, run: SagaRun, node: FlowStep, step: SagaStepRecord, seconds: float
    ) -> SagaFailure:
        """Park a step that returned ``retry_after(seconds)``; fail it if its time is up.

        Returns:
            Why the step failed (its ``wait_timeout`` passed, or the store refused a value
            it left behind).

        Raises:
            Parked: the saga parked until the next poll.
        """
        now = self.clock()
        until = now + timedelta(seconds=seconds)
        policy = node.wait
        if policy is not None and policy.timeout is not None:
            start = step.started_at or now
            ready = start if policy.delay is None else start + timedelta(seconds=policy.delay)
            expires = ready + timedelta(seconds=policy.timeout)
            if now >= expires:
                return self._timed_out(run, node, step, policy)
            until = min(until, expires)
        return await self._park(run, node, "poll", until, since=now)

    async def _take_signal(
        self,
        run: SagaRun,
        node: FlowStep,
        step: SagaStepRecord,
        policy: WaitPolicy,
        expires: datetime | None,
    ) -> SagaSignal | None:
        """The signal this visit of ``node`` takes: the one it took already, or the next."""
        name = policy.signal
        assert name is not None
        saga_id = run.record.saga_id
        if step.signal_seq is not None and step.signal_visit == step.visits:
            own = await self.store.next_signal(saga_id, name, step.signal_seq - 1)
            if own is not None and own.seq == step.signal_seq:
                return own  # a retry, or a resume, of the visit that took it
        signal = await self.store.next_signal(saga_id, name, _taken(run, name))
        if signal is None or (expires is not None and signal.sent_at > expires):
            return None
        step.signal_seq = signal.seq
        step.signal_visit = step.visits
        return signal

    async def _park(
        self,
        run: SagaRun,
        node: FlowStep,
        kind: WaitKind,
        until: datetime | None,
        *,
        since: datetime,
    ) -> SagaFailure:
        """Store the wait and hand the lease back, then raise :class:`Parked`.

        Returns:
            Why the step failed, only when the store refused a value the step left behind
            (nothing was written; the saga goes on holding its lease).

        Raises:
            Parked: the wait is stored.
        """
        record = run.record
        signal = node.wait.signal if node.wait is not None and kind == "signal" else None
        record.waiting = SagaWait(node.name, kind, signal, until, since)
        due = PARKED_FOREVER if until is None else until
        deadline = record.deadline_at
        before = record.not_before
        record.not_before = deadline if deadline is not None and deadline < due else due
        refused = await self._writer.save(run, park=True)
        if refused:
            record.waiting = None
            record.not_before = before
            return self._refused(run, node, refused)
        await self.events.publish(
            run, ev.SagaWaiting, node.name, kind=kind, signal=signal, until=until
        )
        if signal is not None:
            # A signal stored while this worker still held the saga did not make it due.
            early = await self.store.next_signal(record.saga_id, signal, _taken(run, signal))
            if early is not None and (until is None or early.sent_at <= until):
                await self.store.wake(record.saga_id)
        raise Parked

    def _timed_out(
        self, run: SagaRun, node: FlowStep, step: SagaStepRecord, policy: WaitPolicy
    ) -> SagaFailure:
        """Fail a step whose wait timed out (no retry: the wait is over)."""
        if policy.signal is not None:
            error = f"SagaTimeoutError: no signal '{policy.signal}' within {policy.timeout:g}s"
        else:
            error = f"SagaTimeoutError: still polling after {policy.timeout:g}s"
        return self._fail(run, node, step, error, "timeout")

    def _refused(self, run: SagaRun, node: FlowStep, refused: tuple[Rejection, ...]) -> SagaFailure:
        error = (
            f"SagaDataError: step '{node.name}' stored values no store can hold: "
            f"{describe_rejections(refused)}"
        )
        return self._fail(run, node, run.record.steps[node.name], error, "step_error")

    def _fail(
        self,
        run: SagaRun,
        node: FlowStep,
        step: SagaStepRecord,
        error: str,
        kind: FailureKind,
    ) -> SagaFailure:
        step.attempt_errors.append(error)
        step.error = error
        move_step(step, SagaStepStatus.FAILED)
        step.completed_at = self.clock()
        self.events.queue(
            run, ev.SagaStepFailed, node.name, attempt=step.attempts, error=error, will_retry=False
        )
        return SagaFailure(kind, node.name, f"step '{node.name}' failed: {error}")


def _taken(run: SagaRun, name: str) -> int:
    """The highest ``seq`` of a signal ``name`` some step of the saga took (0: none)."""
    steps = run.flow.steps
    taken = 0
    for step_name, step in run.record.steps.items():
        node = steps.get(step_name)
        seq = step.signal_seq
        if (
            seq is not None
            and node is not None
            and node.wait is not None
            and node.wait.signal == name
        ):
            taken = max(taken, seq)
    return taken
