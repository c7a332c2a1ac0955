"""Property test of durable waits (SPEC section 11) against the SPEC section 7 invariants.

Hypothesis draws an interleaving of what can happen to a saga whose middle step waits for
a signal with a ``wait_timeout``: signals (new or repeated ``signal_id``, in time or late,
or racing the write that parks the saga), the clock moving across the timeout and the
deadline, a worker dying inside a step (``testing.SimulatedCrash``) or restarting under its
name, a cancel from a client, and the worker running (``recover()`` or ``serve()``) until
it has nothing left to do. The saga is then driven to its end, and the outcome is checked
against what was sent when.

Everything runs on the in-memory store with a ``testing.ManualClock`` shared by the store
and the managers, and ``testing.NoWaits`` for every retry delay, on a fresh event loop per
example (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from hypothesis import event, given, settings
from hypothesis import strategies as st

from lexigram.events import InMemoryEventBus
from lexigram.events.sagas import (
    InMemorySagaStore,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaManager,
    SagaRecord,
    SagaStatus,
    SagaStepStatus,
    saga_step,
)
from lexigram.events.sagas.errors import SagaFinishedError
from lexigram.events.sagas.events import SagaEvent, SagaStepCompleted
from lexigram.events.sagas.testing import (
    ManualClock,
    NoWaits,
    SimulatedCrash,
    StoreCall,
    StoreWrapper,
)
from lexigram.events.sagas.types import can_transition_saga, can_transition_step
from tests.support.helpers import WAIT, Script, settle, stored

T = TypeVar("T")

STEPS = ("a", "w", "c")
"""``a``, then ``w`` (waits for the signal ``go``), then ``c``; each has a compensation."""
SIGNAL = "go"
TIMEOUT = 100.0
"""``wait_timeout`` of ``w``."""
DEADLINE = 600.0
"""The saga's deadline (``default_timeout_seconds``), counted from its first run."""
SAGA_ID = "s-1"
START = datetime(2030, 1, 1, tzinfo=UTC)
CONFIG = SagaConfig(
    retry_delay_seconds=0,
    shutdown_timeout=1,
    default_timeout_seconds=DEADLINE,
    lease_seconds=30,
    max_recovery_attempts=1000,  # crashes are drawn freely: never a crash loop here
)


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Sent:
    """A signal the store accepted, as the test saw it accepted."""

    seq: int
    signal_id: str
    payload: dict[str, Any]
    sent_at: datetime


@dataclass
class World:
    """What the steps did and saw, and what the test sent, for the oracle at the end."""

    clock: ManualClock
    store: InMemorySagaStore
    script: Script = field(default_factory=Script)
    signals: list[Sent] = field(default_factory=list)
    crash_armed: bool = False
    crashed: bool = False  # a crash happened in the current run: the worker must restart
    crashes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEPS, 0))
    seen: dict[str, list[Any]] = field(default_factory=lambda: {step: [] for step in STEPS})
    violations: list[str] = field(default_factory=list)
    cancelled_at: datetime | None = None  # when a cancel was first asked of the live saga

    async def act(self, step: str, ctx: SagaContext) -> dict[str, Any]:
        """The action of ``step``: check what is durable, maybe die, note the signal."""
        record = await stored(self.store, ctx.saga_id)
        index = STEPS.index(step)
        if index > 0 and record.steps[STEPS[index - 1]].status is not SagaStepStatus.COMPLETED:
            self.violations.append(f"{step} started before {STEPS[index - 1]} was durable")
        if record.lease_owner != "worker":
            self.violations.append(f"{step} ran while the store said {record.lease_owner} held it")
        self.seen[step].append(ctx.signal)
        if self.crash_armed:
            self.crash_armed = False
            self.crashed = True
            self.crashes[step] += 1
            raise SimulatedCrash(f"the worker died inside {step}")
        return {"signal": ctx.signal}

    async def undo(self, step: str, ctx: SagaContext) -> None:
        """A compensation: it starts only once the saga compensates and later steps are undone."""
        record = await stored(self.store, ctx.saga_id)
        if record.status is not SagaStatus.COMPENSATING:
            self.violations.append(f"undo {step} while the stored saga was {record.status}")
        if record.lease_owner != "worker":
            self.violations.append(f"undo {step} ran while {record.lease_owner} held the saga")
        mine = record.steps[step].completion_seq or 0
        pending = [
            other.step_name
            for other in record.steps.values()
            if (other.completion_seq or 0) > mine
            and other.status in (SagaStepStatus.COMPLETED, SagaStepStatus.COMPENSATING)
        ]
        if pending:
            self.violations.append(f"undo {step} before {pending} were compensated")


def bind(world: World) -> None:
    """Make the script's steps and compensations call the world's checks."""
    for step in STEPS:

        async def act(ctx: SagaContext, step: str = step) -> object:
            return await world.act(step, ctx)

        async def undo(ctx: SagaContext, step: str = step) -> object:
            await world.undo(step, ctx)
            return None

        world.script.behaviours[step] = act
        world.script.undo_behaviours[step] = undo


class WaitingSaga(SagaBase):
    """``a`` -> ``w`` (waits for ``go`` up to ``TIMEOUT``) -> ``c``, all compensated."""

    name = "waiting"

    def __init__(self, script: Script) -> None:
        self.script = script

    @saga_step("a", max_retries=0)
    async def a(self, ctx: SagaContext) -> object:
        return await self.script.act("a", ctx)

    @saga_step("a", compensation=True)
    async def undo_a(self, ctx: SagaContext) -> object:
        return await self.script.undo("a", ctx)

    @saga_step("w", wait_for=SIGNAL, wait_timeout=TIMEOUT, max_retries=0)
    async def w(self, ctx: SagaContext) -> object:
        return await self.script.act("w", ctx)

    @saga_step("w", compensation=True)
    async def undo_w(self, ctx: SagaContext) -> object:
        return await self.script.undo("w", ctx)

    @saga_step("c", max_retries=0)
    async def c(self, ctx: SagaContext) -> object:
        return await self.script.act("c", ctx)

    @saga_step("c", compensation=True)
    async def undo_c(self, ctx: SagaContext) -> object:
        return await self.script.undo("c", ctx)


class Audit(StoreWrapper):
    """Notes every write that changed the saga: method, version and status after it.

    A write that took effect must raise the version by exactly one; one that did not
    (a refused save, an empty claim, a release of nothing) must leave it alone.
    ``before_park``, when set, is awaited (once) just before the next write that parks
    the saga: a signal sent then races the park.
    """

    def __init__(self, inner: InMemorySagaStore) -> None:
        super().__init__(inner)
        self.memory = inner
        self.writes: builtins.list[tuple[str, int, SagaRecord]] = []
        self.problems: builtins.list[str] = []
        self.before_park: Callable[[], Awaitable[None]] | None = None

    async def forward(self, call: StoreCall[T]) -> T:
        """Perform ``call``; for a versioned write of the saga, check its version step."""
        if not call.is_write:
            return await call.send(self.inner)
        racer = self.before_park
        if racer is not None and call.method == "save" and call.arguments["record"].waiting:
            self.before_park = None
            await racer()
        before = await self.memory.load(SAGA_ID)
        result = await call.send(self.inner)
        after = await self.memory.load(SAGA_ID)
        if after is None:
            return result
        if call.method == "save":
            landed = call.arguments["record"].saga_id == SAGA_ID
        elif call.method == "claim":
            claimed = cast("builtins.list[SagaRecord]", result)
            landed = any(r.saga_id == SAGA_ID for r in claimed)
        else:
            landed = call.arguments["saga_id"] == SAGA_ID and bool(result)
        old = 0 if before is None else before.version
        if after.version != old + (1 if landed else 0):
            self.problems.append(f"{call.method}: version {old} -> {after.version}")
        if landed:
            self.writes.append((call.method, after.version, after))
        return result


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action:
    """One thing that happens (``kind`` and its argument), then maybe the worker runs.

    ``idle`` seconds pass first, with no worker looking. ``then`` is ``"recover"`` or
    ``"serve"`` to let the worker run right after the action (until it has nothing left
    to do now), ``None`` to go on at once.
    """

    kind: str
    arg: str | float | None = None
    then: str | None = None
    idle: float = 0.0


KINDS = (*("signal",) * 4, *("advance",) * 4, *("crash",) * 2, "race", "restart", "cancel")
"""Drawn uniformly: a cancel is rare, so that most sagas get to time out or complete."""


@st.composite
def actions(draw: st.DrawFn) -> Action:
    """One action, with its argument, and whether and how the worker runs after it."""
    kind = draw(st.sampled_from(KINDS))
    # The clock often moves with no worker looking, so that a signal may come after the
    # timeout before any worker saw the timeout pass.
    unwatched = 3 if kind == "advance" else 1
    then = draw(st.sampled_from(["recover", "serve", *(None,) * unwatched]))
    if kind == "race":  # a signal sent while the worker is about to park the saga
        return Action(kind, draw(st.sampled_from(["x", "y", None])), then)
    if kind == "signal":  # often a while after the last look: in time, or just too late
        idle = draw(st.sampled_from([0.0, 0.0, 50.0, TIMEOUT, TIMEOUT + 1, 160.0]))
        return Action(kind, draw(st.sampled_from(["x", "y", None])), then, idle)
    if kind == "advance":
        seconds = st.sampled_from([1.0, 40.0, 60.0, 99.0, 100.0, 101.0, 160.0, DEADLINE + 1])
        return Action(kind, draw(seconds | st.floats(min_value=0, max_value=250)), then)
    return Action(kind, None, then)


class Driver:
    """Runs the drawn actions against one store, with a client and a restartable worker."""

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.memory = InMemorySagaStore(clock=self.clock)
        self.store = Audit(self.memory)
        self.world = World(self.clock, self.memory)
        bind(self.world)
        self.bus = InMemoryEventBus()
        self.events: list[SagaEvent] = []
        self.bus.subscribe(SagaEvent, self._note)
        self.client = self._manager("client")
        self.worker = self._manager("worker")
        self.sent = 0

    async def _note(self, event: SagaEvent) -> None:
        self.events.append(event)

    def _manager(self, worker_id: str) -> SagaManager:
        manager = SagaManager(
            self.store,
            config=CONFIG,
            event_bus=self.bus,
            worker_id=worker_id,
            clock=self.clock,
            sleep=NoWaits(),
        )
        manager.register(WaitingSaga, factory=lambda: WaitingSaga(self.world.script))
        return manager

    async def restart(self) -> None:
        """Close the worker and start it again under the same name."""
        await self.worker.close()
        self.worker = self._manager("worker")
        self.world.crashed = False

    async def record(self) -> SagaRecord:
        return await stored(self.memory, SAGA_ID)

    async def apply(self, action: Action) -> None:
        """Perform one action."""
        self.clock.advance(action.idle)
        if action.kind == "signal":
            await self.signal(action.arg if isinstance(action.arg, str) else None)
        elif action.kind == "advance":
            assert isinstance(action.arg, float)
            self.clock.advance(action.arg)
        elif action.kind == "crash":
            self.world.crash_armed = True
        elif action.kind == "race":
            raced = action.arg if isinstance(action.arg, str) else None
            self.store.before_park = lambda: self.signal(raced)
        elif action.kind == "restart":
            await self.restart()
        else:
            assert action.kind == "cancel"
            if not (await self.record()).is_terminal and self.world.cancelled_at is None:
                self.world.cancelled_at = self.clock()
            await self.client.cancel(SAGA_ID, reason="the test cancelled it")
        if action.then is not None:
            await self.run(serve=action.then == "serve")

    async def signal(self, signal_id: str | None) -> None:
        """Send ``go``; check the store's answer against the signals sent so far."""
        self.sent += 1
        payload = {"k": self.sent}
        known = [s for s in self.world.signals if s.signal_id == signal_id]
        terminal = (await self.record()).is_terminal
        try:
            new = await self.client.signal(SAGA_ID, SIGNAL, payload, signal_id=signal_id)
        except SagaFinishedError:
            assert terminal, "refused a signal to a live saga"
            assert not known, "a repeated signal_id was an error, not a duplicate"
            return
        assert new == (not known), (signal_id, known)
        if new:
            stored_id = signal_id
            if stored_id is None:  # a fresh id: read it back from the store
                taken = await self.memory.next_signal(SAGA_ID, SIGNAL, len(self.world.signals))
                assert taken is not None
                stored_id = taken.signal_id
            seq = len(self.world.signals) + 1
            self.world.signals.append(Sent(seq, stored_id, payload, self.clock()))

    async def run(self, *, serve: bool) -> None:
        """Let the worker work until it has nothing left to do now; restart it after a crash."""
        if serve:
            await self._serve()
        else:
            while await self.worker.recover():
                await settle(self.worker)
                if self.world.crashed:
                    break
        if self.world.crashed:
            await self.restart()
            return
        record = await self.record()
        parked = record.waiting
        if parked is not None and parked.kind == "signal" and self.world.signals:
            self.world.violations.append(
                f"idle worker, saga parked for {parked.signal!r} with a signal stored"
            )

    async def _serve(self) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self.worker.serve(stop=stop, poll_interval=0.005))
        try:
            async with asyncio.timeout(WAIT):
                while not (self.world.crashed or await self._quiet()):
                    await asyncio.sleep(0.002)
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)

    async def _quiet(self) -> bool:
        """Whether the worker runs nothing and the saga is ended or parked and not due."""
        if self.worker.running():
            return False
        record = await self.record()
        if record.is_terminal:
            return True
        return (
            record.lease_owner is None
            and record.cancel_requested_at is None
            and record.not_before is not None
            and record.not_before > self.clock()
        )

    async def finish(self) -> SagaRecord:
        """Run the saga to its end, moving the clock past every timeout when it parks."""
        for seconds in (TIMEOUT + 1, TIMEOUT + 1, DEADLINE + 1, DEADLINE + 1, 0, 0):
            await self.run(serve=False)
            record = await self.record()
            if record.is_terminal:
                return record
            self.clock.advance(seconds)
        raise AssertionError(f"the saga never ended: {await self.record()}")

    async def close(self) -> None:
        await self.worker.close()
        await self.client.close()


# --------------------------------------------------------------------------- the oracle


def allowed_outcomes(world: World, final: SagaRecord, now: datetime) -> set[str | None]:
    """The failure kinds the final record may carry (``None``: completed).

    A signal stored no later than the wait's timeout wins over the timeout; a cancel asked
    of the live saga wins over a timeout or deadline that had not passed when it was asked
    (a worker may decide later, but it decides from what is stored).
    """
    step = final.steps.get("w")
    expires = None
    if step is not None and step.started_at is not None:
        expires = step.started_at + timedelta(seconds=TIMEOUT)
    first = world.signals[0] if world.signals else None
    in_time = first is not None and expires is not None and first.sent_at <= expires
    asked = world.cancelled_at

    def passed(moment: datetime | None) -> bool:
        return moment is not None and moment <= now and (asked is None or moment <= asked)

    allowed: set[str | None] = set()
    if in_time and asked is None:
        allowed.add(None)
    if asked is not None:
        allowed.add("cancelled")
    if passed(final.deadline_at):
        allowed.add("deadline")
    if not in_time and passed(expires):
        allowed.add("timeout")
    return allowed


async def check(driver: Driver, final: SagaRecord) -> None:
    """Every property of the final record, the step log and the store's writes."""
    world = driver.world
    script = world.script
    now = driver.clock()
    failure = final.failure
    kind = None if failure is None else failure.kind
    assert world.violations == []
    assert driver.store.problems == []
    assert kind in allowed_outcomes(world, final, now), (kind, final, world.signals)

    # the signals the store holds are the ones the test saw accepted, in order
    held = []
    after = 0
    while (next_one := await driver.memory.next_signal(SAGA_ID, SIGNAL, after)) is not None:
        held.append((next_one.seq, next_one.signal_id, next_one.payload, next_one.sent_at))
        after = next_one.seq
    assert held == [(s.seq, s.signal_id, s.payload, s.sent_at) for s in world.signals]

    # the waiting step: it ran only with the first signal, and only if that came in time
    w = final.steps.get("w")
    ran_w = world.seen["w"]
    if ran_w:
        assert w is not None
        assert w.started_at is not None
        first = world.signals[0]
        assert first.sent_at <= w.started_at + timedelta(seconds=TIMEOUT), "a late signal won"
        assert ran_w == [first.payload] * len(ran_w)
    if kind == "timeout":
        assert failure is not None
        assert failure.step == "w"
        assert w is not None
        assert w.status is SagaStepStatus.FAILED
        assert w.completion_seq is None
        assert ran_w == [], "the step both timed out and ran"
    completed_w = [
        e for e in driver.events if isinstance(e, SagaStepCompleted) and e.step_name == "w"
    ]
    if w is not None and w.completion_seq is not None:
        assert kind != "timeout"
        assert w.output == {"signal": world.signals[0].payload}
        assert w.signal_seq == 1
        assert len(completed_w) == 1
    else:
        assert completed_w == []

    # at least once, and only once more per crash in the step (invariant 3)
    for step in STEPS:
        record = final.steps.get(step)
        attempts = 0 if record is None else record.attempts
        assert attempts in (0, 1)
        assert script.count(step) == world.crashes[step] + attempts, (step, script.calls)

    # compensation: exactly the completed steps, in reverse completion order (invariant 2)
    done = sorted(
        (s for s in final.steps.values() if s.completion_seq is not None),
        key=lambda s: s.completion_seq or 0,
    )
    if final.status is SagaStatus.COMPLETED:
        assert kind is None
        assert [s.step_name for s in done] == list(STEPS)
        assert script.undone() == []
    else:
        assert final.status is SagaStatus.COMPENSATED, final
        assert script.undone() == [s.step_name for s in reversed(done)]
        assert all(s.status is SagaStepStatus.COMPENSATED for s in done)
        assert [s.step_name for s in done] == list(STEPS[: len(done)])
        assert len(done) < len(STEPS)

    # one outcome, written once and last; versions +1 per write; legal transitions (inv. 6)
    writes = driver.store.writes
    assert [v for _, v, _ in writes] == list(range(1, final.version + 1))
    terminal = [i for i, (_, _, r) in enumerate(writes) if r.is_terminal]
    assert terminal == [len(writes) - 1], [(m, r.status) for m, _, r in writes]
    for (_, _, old), (_, _, new) in itertools.pairwise(writes):
        assert can_transition_saga(old.status, new.status), (old.status, new.status)
        for name, moved in new.steps.items():
            if name in old.steps:
                assert can_transition_step(old.steps[name].status, moved.status), (name, moved)
    assert final.waiting is None
    assert final.lease_owner is None


def note_case(world: World, final: SagaRecord) -> None:
    """Tell hypothesis which case this example was (``--hypothesis-show-statistics``)."""
    step = final.steps.get("w")
    first = world.signals[0] if world.signals else None
    if first is None or step is None or step.started_at is None:
        timing = "no signal to a waiting step"
    elif first.sent_at <= step.started_at + timedelta(seconds=TIMEOUT):
        timing = "first signal in time"
    else:
        timing = "first signal late"
    kind = "completed" if final.failure is None else final.failure.kind
    event(f"{timing}, {kind}")
    event(f"{sum(world.crashes.values())} crashes")


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), WAIT * 6))


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.lists(actions(), min_size=1, max_size=12))
def test_a_waiting_step_ends_exactly_once_whatever_happens(
    park_first: bool, plan: list[Action]
) -> None:
    """Signals, clock moves, crashes, restarts and cancels: one outcome, invariants hold.

    The waiting step completes once with the first signal stored no later than its
    timeout, or fails with ``kind="timeout"`` when none came in time, or the saga is
    cancelled or reaches its deadline, never two of these; a late signal never runs the
    step; compensations undo exactly the completed steps, in reverse order; every write
    raises the version by one and the terminal status is written once, last.
    """

    async def scenario() -> None:
        driver = Driver()
        await driver.client.enqueue("waiting", {"order": "o-1"}, SAGA_ID)
        try:
            if park_first:  # the worker takes the saga to its wait before anything happens
                await driver.run(serve=False)
            for action in plan:
                await driver.apply(action)
            final = await driver.finish()
            await check(driver, final)
            note_case(driver.world, final)
        finally:
            await driver.close()

    run(scenario)
