"""Shared saga classes, a fault-injecting store wrapper and small waiting helpers.

Used by the engine, manager, context, events and invariant tests. Everything here is built
on the public API only (``SagaBase``, ``saga_step``, ``SagaStore``), so a helper can never
hide an engine bug.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from lexigram.events import DomainEvent
from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore, SagaStore
from lexigram.events.sagas.testing import FaultyStore, SimulatedCrash, StoreCall
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepRecord, SagaStepStatus

WAIT = 5.0
"""A safety net against hangs; never reached when a test passes."""

Behaviour = Callable[[SagaContext], Awaitable[object]]

T = TypeVar("T")


Crash = SimulatedCrash
"""Stands for the process dying: no ``except Exception`` handles it."""


# --------------------------------------------------------------------------- scripted sagas


@dataclass
class Script:
    """What the steps of a scripted saga do, and a log of every call they received.

    By default an action sets ``ctx.data[step] = "done"`` and returns ``{"step": step}``;
    a compensation sets ``ctx.data["undone_" + step] = True`` and returns ``None``.
    ``calls`` holds ``"<step>:<attempt>"`` for actions and ``"undo <step>"`` for
    compensations.
    """

    calls: list[str] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    undo_behaviours: dict[str, Behaviour] = field(default_factory=dict)
    contexts: list[SagaContext] = field(default_factory=list)

    async def act(self, step: str, ctx: SagaContext) -> object:
        self.calls.append(f"{step}:{ctx.attempt}")
        behaviour = self.behaviours.get(step)
        if behaviour is not None:
            return await behaviour(ctx)
        ctx[step] = "done"
        return {"step": step}

    async def undo(self, step: str, ctx: SagaContext) -> object:
        self.calls.append(f"undo {step}")
        behaviour = self.undo_behaviours.get(step)
        if behaviour is not None:
            return await behaviour(ctx)
        ctx["undone_" + step] = True
        return None

    def actions(self) -> list[str]:
        """The steps whose action was called, in call order (attempts dropped)."""
        return [call.split(":")[0] for call in self.calls if not call.startswith("undo ")]

    def undone(self) -> list[str]:
        """The steps whose compensation was called, in call order."""
        return [call[5:] for call in self.calls if call.startswith("undo ")]

    def count(self, step: str) -> int:
        """How many times the action of ``step`` was called."""
        return self.actions().count(step)


def _action(script: Script, step: str) -> Callable[[Any, SagaContext], Awaitable[object]]:
    async def action(self: Any, ctx: SagaContext) -> object:
        return await script.act(step, ctx)

    return action


def _undo(script: Script, step: str) -> Callable[[Any, SagaContext], Awaitable[object]]:
    async def undo(self: Any, ctx: SagaContext) -> object:
        return await script.undo(step, ctx)

    return undo


@dataclass(frozen=True)
class Tuning:
    """``@saga_step`` settings of one step (``None``: the config default)."""

    max_retries: int | None = None
    retry_delay: float | None = 0
    timeout: float | None = None
    undo_max_retries: int | None = None
    undo_retry_delay: float | None = 0


def saga_class(
    script: Script,
    steps: Sequence[str] = ("a", "b", "c"),
    *,
    name: str = "scripted",
    compensated: Collection[str] | None = None,
    tuning: Mapping[str, Tuning] | None = None,
) -> type[SagaBase]:
    """Build a ``SagaBase`` subclass whose steps run ``script`` (in ``steps`` order).

    ``compensated`` lists the steps that get a compensation (all of them by default).
    """
    namespace: dict[str, Any] = {"name": name}
    with_undo = set(steps if compensated is None else compensated)
    for step in steps:
        tune = (tuning or {}).get(step, Tuning())
        namespace[f"do_{step}"] = saga_step(
            step,
            max_retries=tune.max_retries,
            retry_delay=tune.retry_delay,
            timeout=tune.timeout,
        )(_action(script, step))
        if step in with_undo:
            namespace[f"undo_{step}"] = saga_step(
                step,
                compensation=True,
                max_retries=tune.undo_max_retries,
                retry_delay=tune.undo_retry_delay,
            )(_undo(script, step))
    return type(f"Scripted_{name}", (SagaBase,), namespace)


def manager_for(
    script: Script,
    steps: Sequence[str] = ("a", "b", "c"),
    *,
    name: str = "scripted",
    compensated: Collection[str] | None = None,
    tuning: Mapping[str, Tuning] | None = None,
    **options: Any,
) -> SagaManager:
    """Return a ``SagaManager`` with one scripted saga registered."""
    manager = SagaManager(**options)
    manager.register(saga_class(script, steps, name=name, compensated=compensated, tuning=tuning))
    return manager


# --------------------------------------------------------------------------- behaviours


def raise_each(*errors: BaseException) -> Behaviour:
    """Raise ``errors`` one per call, then succeed with ``{"attempt": n}``."""
    pending = list(errors)

    async def behave(ctx: SagaContext) -> object:
        if pending:
            raise pending.pop(0)
        return {"attempt": ctx.attempt}

    return behave


def returning(value: object) -> Behaviour:
    """Return ``value`` every time."""

    async def behave(ctx: SagaContext) -> object:
        return value

    return behave


def blocking(entered: asyncio.Event, release: asyncio.Event | None = None) -> Behaviour:
    """Set ``entered``, then wait for ``release`` (forever when ``None``)."""

    async def behave(ctx: SagaContext) -> object:
        entered.set()
        await (release or asyncio.Event()).wait()
        return {"released": True}

    return behave


def crash_first(times: int = 1) -> Behaviour:
    """Raise ``Crash`` (a dying process) on the first ``times`` calls, then succeed."""
    left = [times]

    async def behave(ctx: SagaContext) -> object:
        if left[0] > 0:
            left[0] -= 1
            raise Crash("the worker died inside the step")
        ctx["survived"] = True
        return {"survived": True}

    return behave


class StuckStep:
    """A step that waits forever; notes when it starts and how often it is cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancellations = 0

    async def __call__(self, ctx: SagaContext) -> object:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancellations += 1
            raise
        return None


# --------------------------------------------------------------------------- fault injection


@dataclass
class Fault:
    """Which writes of a ``FaultStore`` fail, and how (write numbers start at 1)."""

    crash_before: int | None = None
    crash_after: int | None = None
    unavailable: Collection[int] = ()
    ambiguous: Collection[int] = ()


class FaultStore(FaultyStore):
    """The library's ``FaultyStore``, configured by a ``Fault``, noting when it crashed.

    ``saves`` gives ``(saga_id, version before, version after, status)`` of every save
    that reached the inner store, so tests can check the version sequence.
    """

    def __init__(self, inner: SagaStore, fault: Fault | None = None) -> None:
        self.fault = fault or Fault()
        super().__init__(
            inner,
            crash_before_write=self.fault.crash_before,
            crash_after_write=self.fault.crash_after,
            unavailable_writes=self.fault.unavailable,
            ambiguous_writes=self.fault.ambiguous,
        )
        self.crashed = asyncio.Event()

    @property
    def saves(self) -> builtins.list[tuple[str, int, int, SagaStatus]]:
        """Every save that reached the inner store, oldest first."""
        return [(saga_id, version - 1, version, status) for saga_id, version, status in self.saved]

    async def forward(self, call: StoreCall[T]) -> T:
        """Forward ``call``; set ``crashed`` when it dies with ``Crash``."""
        try:
            return await super().forward(call)
        except Crash:
            self.crashed.set()
            raise


class RaisingBus:
    """An event bus whose ``publish`` raises: it must never break a saga."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, event: object) -> Any:
        self.attempts += 1
        raise RuntimeError("the bus is down")

    def subscribe(self, event_type: Any, handler: Any) -> None:
        """Accept and ignore subscriptions."""

    def unsubscribe(self, event_type: Any, handler: Any) -> bool:
        return False


# --------------------------------------------------------------------------- waiting


async def run_task(saga_id: str) -> asyncio.Task[Any]:
    """Return the background task running ``saga_id`` in this process (named by the engine)."""
    for task in asyncio.all_tasks():
        if task.get_name() == f"saga:{saga_id}":
            return task
    raise AssertionError(f"no task runs saga {saga_id}")


async def await_crash(saga_id: str) -> None:
    """Wait for the run of ``saga_id`` to die with ``Crash`` (and observe that exception)."""
    task = await run_task(saga_id)
    try:
        async with asyncio.timeout(WAIT):
            await task
    except Crash:
        return
    raise AssertionError(f"the run of saga {saga_id} ended without crashing")


async def finish_run(saga_id: str) -> bool:
    """Wait for the run of ``saga_id`` in this process to end; return whether it crashed."""
    task = await run_task(saga_id)
    try:
        async with asyncio.timeout(WAIT):
            await task
    except Crash:
        return True
    return False


async def settle(manager: SagaManager) -> None:
    """Wait until ``manager`` runs no saga any more."""
    async with asyncio.timeout(WAIT):
        while manager.running():
            await asyncio.sleep(0.001)


async def stored(store: SagaStore, saga_id: str) -> SagaRecord:
    """Load a record that must exist."""
    record = await store.load(saga_id)
    assert record is not None, saga_id
    return record


def seed_record(
    saga_id: str,
    saga_name: str,
    *,
    done: Iterable[str] = (),
    current: str | None = None,
    status: SagaStatus = SagaStatus.RUNNING,
    data: dict[str, Any] | None = None,
) -> SagaRecord:
    """Build an unowned, non-terminal record as a worker that died would leave it."""
    now = datetime.now(UTC)
    steps = {
        name: SagaStepRecord(
            name,
            SagaStepStatus.COMPLETED,
            started_at=now,
            completed_at=now,
            output={"step": name},
            attempts=1,
            completion_seq=seq,
            visits=1,
        )
        for seq, name in enumerate(done, start=1)
    }
    return SagaRecord(
        saga_id=saga_id,
        saga_name=saga_name,
        status=status,
        data=dict(data or {}),
        steps=steps,
        created_at=now,
        updated_at=now,
        metadata={"correlation_id": saga_id},
        current_step=current,
    )


# --------------------------------------------------------------------------- crash and recover


@dataclass
class Crashed:
    """The state after a crashed run of ``s-1`` and its recovery by a new manager."""

    at_crash: SagaRecord | None
    final: SagaRecord | None
    script: Script
    recovered: int


FAST = SagaConfig(retry_delay_seconds=0)


async def reference(make: Callable[[], Script], **saga: Any) -> SagaRecord:
    """Run ``s-1`` of a scripted saga without any fault and return its terminal record."""
    manager = manager_for(make(), config=FAST, **saga)
    record = await manager.execute("scripted", {"order_id": "o-1"}, "s-1", timeout=WAIT)
    await manager.close()
    return record


async def crash_and_recover(make: Callable[[], Script], fault: Fault, **saga: Any) -> Crashed:
    """Run ``s-1`` on a store failing as ``fault`` says, then recover it with a new manager.

    The new manager runs under the same worker name (a restarted worker), so it may take
    the dead run's saga over at once.
    """
    inner = InMemorySagaStore()
    script = make()
    first = manager_for(script, store=FaultStore(inner, fault), config=FAST, worker_id="w", **saga)
    try:
        await first.start("scripted", {"order_id": "o-1"}, "s-1")
    except Crash:
        pass  # the crash hit start()'s own write
    else:
        await await_crash("s-1")
    at_crash = await inner.load("s-1")
    second = manager_for(script, store=inner, config=FAST, worker_id="w", **saga)
    recovered = await second.recover()
    final = None if at_crash is None else await second.wait("s-1", timeout=WAIT)
    await first.close()
    await second.close()
    return Crashed(at_crash, final, script, recovered)


def outcome(record: SagaRecord | None) -> tuple[Any, ...]:
    """What an uninterrupted run and a recovered run must agree on."""
    assert record is not None
    return (
        record.status,
        record.data,
        record.step_statuses(),
        {name: step.output for name, step in record.steps.items()},
    )


def check_at_least_once(crashed: Crashed) -> None:
    """Durable outcomes never ran again; at most one call (the one in flight) was repeated."""
    at_crash = crashed.at_crash
    assert at_crash is not None
    calls = crashed.script.calls
    assert len(calls) - len(set(calls)) <= 1, calls
    done = (
        SagaStepStatus.COMPLETED,
        SagaStepStatus.COMPENSATING,
        SagaStepStatus.COMPENSATED,
        SagaStepStatus.FAILED,
    )
    for name, step in at_crash.steps.items():
        if step.status in done and step.completed_at is not None:
            assert crashed.script.count(name) == step.attempts, (name, calls)
        if step.status is SagaStepStatus.COMPENSATED:
            assert crashed.script.undone().count(name) == step.compensation_attempts, (name, calls)


# --------------------------------------------------------------------------- shared by test modules


def progress(record: SagaRecord) -> tuple[Any, ...]:
    """The parts of a record that recovery must never change when it refuses a saga."""
    return (
        record.status,
        record.data,
        record.step_statuses(),
        record.current_step,
        record.error,
        record.completed_at,
    )


class OrderPlaced(DomainEvent):
    order_id: str


def failing_c(script: Script) -> Script:
    """Make step c of ``script`` return a business failure."""
    script.behaviours["c"] = returning(SagaStepResult.fail("declined"))
    return script
