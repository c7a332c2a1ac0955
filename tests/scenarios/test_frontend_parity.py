"""The same tests on both front-ends: one engine, so identical behaviour.

The ``front_end`` fixture builds one 3-step saga (``reserve`` -> ``charge`` -> ``confirm``;
the first two have compensations) from the same step functions, either as a ``SagaBase``
subclass on a ``SagaManager`` or as an orchestrated flow on a ``SagaOrchestrator``. Every
test below runs once per front-end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from lexigram.events import InMemoryEventBus
from lexigram.events.sagas._engine.rules import idempotency_key
from lexigram.events.sagas._runtime import SagaRuntime
from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.errors import NonRetryableError
from lexigram.events.sagas.events import SagaEvent, SagaStepStarted
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.orchestrator import OrchestratedStep, SagaOrchestrator
from lexigram.events.sagas.store import InMemorySagaStore, SagaStore
from lexigram.events.sagas.testing import FaultyStore, SimulatedCrash
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus

NAME = "parity"
WAIT = 5.0  # a safety net against hangs, never reached when the test passes

Behaviour = Callable[[SagaContext], Awaitable[object]]


@dataclass(frozen=True)
class Tuning:
    """Per-step settings, given identically to both front-ends."""

    max_retries: int | None = None
    timeout: float | None = None


@dataclass
class Script:
    """The step functions both front-ends call, and a log of every call."""

    calls: list[str] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    undo_behaviours: dict[str, Behaviour] = field(default_factory=dict)

    async def act(self, step: str, ctx: SagaContext) -> object:
        self.calls.append(f"{step}:{ctx.attempt}")
        behaviour = self.behaviours.get(step)
        if behaviour is not None:
            return await behaviour(ctx)
        return {step: "done"}

    async def undo(self, step: str, ctx: SagaContext) -> object:
        self.calls.append(f"undo {step}")
        behaviour = self.undo_behaviours.get(step)
        return None if behaviour is None else await behaviour(ctx)


def build_manager(script: Script, tuning: Mapping[str, Tuning], **options: Any) -> SagaRuntime:
    for_reserve, for_charge, for_confirm = (tuning.get(step, Tuning()) for step in STEPS)

    class ParitySaga(SagaBase):
        name = NAME

        @saga_step("reserve", max_retries=for_reserve.max_retries, timeout=for_reserve.timeout)
        async def reserve(self, ctx: SagaContext) -> object:
            return await script.act("reserve", ctx)

        @saga_step("reserve", compensation=True)
        async def release(self, ctx: SagaContext) -> object:
            return await script.undo("reserve", ctx)

        @saga_step("charge", max_retries=for_charge.max_retries, timeout=for_charge.timeout)
        async def charge(self, ctx: SagaContext) -> object:
            return await script.act("charge", ctx)

        @saga_step("charge", compensation=True)
        async def refund(self, ctx: SagaContext) -> object:
            return await script.undo("charge", ctx)

        @saga_step("confirm", max_retries=for_confirm.max_retries, timeout=for_confirm.timeout)
        async def confirm(self, ctx: SagaContext) -> object:
            return await script.act("confirm", ctx)

    manager = SagaManager(**options)
    manager.register(ParitySaga)
    return manager


class ScriptedAction:
    """A SagaAction running one step of the script."""

    def __init__(self, script: Script, step: str) -> None:
        self.script = script
        self.step = step

    async def execute(self, ctx: SagaContext) -> object:
        return await self.script.act(self.step, ctx)

    async def compensate(self, ctx: SagaContext) -> object:
        return await self.script.undo(self.step, ctx)


def build_orchestrator(script: Script, tuning: Mapping[str, Tuning], **options: Any) -> SagaRuntime:
    def tuned(step: str) -> dict[str, Any]:
        settings = tuning.get(step, Tuning())
        return {"max_retries": settings.max_retries, "timeout": settings.timeout}

    async def confirm(ctx: SagaContext) -> object:  # a plain callable: no compensation
        return await script.act("confirm", ctx)

    orchestrator = SagaOrchestrator(**options)
    orchestrator.define(
        NAME,
        [
            OrchestratedStep(
                "reserve",
                action=ScriptedAction(script, "reserve"),
                next_step="charge",
                **tuned("reserve"),
            ),
            OrchestratedStep(
                "charge",
                action=ScriptedAction(script, "charge"),
                next_step="confirm",
                **tuned("charge"),
            ),
            OrchestratedStep("confirm", action=confirm, **tuned("confirm")),
        ],
    )
    return orchestrator


STEPS = ("reserve", "charge", "confirm")
BUILDERS = {"manager": build_manager, "orchestrator": build_orchestrator}


class FrontEnd:
    """Builds the parity saga on one front-end and closes what it built."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.script = Script()
        self.built: list[SagaRuntime] = []

    def build(
        self,
        *,
        tuning: Mapping[str, Tuning] | None = None,
        config: SagaConfig | None = None,
        event_bus: InMemoryEventBus | None = None,
        store: SagaStore | None = None,
        worker_id: str | None = None,
    ) -> SagaRuntime:
        runtime = BUILDERS[self.kind](
            self.script,
            tuning or {},
            store=store,
            config=config or SagaConfig(retry_delay_seconds=0),
            event_bus=event_bus,
            worker_id=worker_id,
        )
        self.built.append(runtime)
        return runtime


@pytest.fixture(params=sorted(BUILDERS))
async def front_end(request: pytest.FixtureRequest) -> AsyncIterator[FrontEnd]:
    built = FrontEnd(request.param)
    yield built
    for runtime in built.built:
        await runtime.close()


def fail_with(*errors: BaseException) -> Behaviour:
    """A behaviour raising ``errors`` one per attempt, then succeeding."""
    pending = list(errors)

    async def behave(ctx: SagaContext) -> object:
        if pending:
            raise pending.pop(0)
        return {"ok": ctx.attempt}

    return behave


async def block_forever(ctx: SagaContext) -> object:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- tests


async def test_steps_run_in_order_and_complete(front_end: FrontEnd) -> None:
    """Every step runs once, in order; outputs are stored and the saga completes."""
    record = await front_end.build().execute(NAME, {"order": "o-1"}, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert front_end.script.calls == ["reserve:1", "charge:1", "confirm:1"]
    assert list(record.steps) == list(STEPS)
    assert record.steps["charge"].output == {"charge": "done"}


async def test_transient_failure_is_retried_until_it_succeeds(front_end: FrontEnd) -> None:
    """Raised transient errors are retried; each failed attempt is recorded."""
    front_end.script.behaviours["charge"] = fail_with(ConnectionError("a"), OSError("b"))
    record = await front_end.build().execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    charge = record.steps["charge"]
    assert charge.attempts == 3
    assert charge.attempt_errors == ["ConnectionError: a", "OSError: b"]
    assert charge.output == {"ok": 3}


async def test_attempts_are_bounded_by_max_retries(front_end: FrontEnd) -> None:
    """A step that keeps failing is attempted max_retries + 1 times, then compensated."""
    front_end.script.behaviours["charge"] = fail_with(*(ConnectionError() for _ in range(10)))
    runtime = front_end.build(tuning={"charge": Tuning(max_retries=2)})
    record = await runtime.execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["charge"].attempts == 3
    assert front_end.script.calls == [
        "reserve:1",
        "charge:1",
        "charge:2",
        "charge:3",
        "undo reserve",
    ]


@pytest.mark.parametrize(
    "error",
    [ValueError("bad amount"), KeyError("card"), NonRetryableError("fraud")],
    ids=["ValueError", "KeyError", "NonRetryableError"],
)
async def test_non_retryable_error_is_not_retried(
    front_end: FrontEnd, error: BaseException
) -> None:
    """Non-retryable exceptions fail the step at once and compensation starts."""
    front_end.script.behaviours["charge"] = fail_with(error)
    runtime = front_end.build(tuning={"charge": Tuning(max_retries=5)})
    record = await runtime.execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["charge"].attempts == 1
    assert record.steps["charge"].status is SagaStepStatus.FAILED


async def test_returned_failure_is_retried_only_when_retryable(front_end: FrontEnd) -> None:
    """``fail(retryable=True)`` is retried; a plain ``fail`` is not."""
    outcomes = [SagaStepResult.fail("busy", retryable=True), SagaStepResult.fail("declined")]

    async def charge(ctx: SagaContext) -> object:
        return outcomes.pop(0)

    front_end.script.behaviours["charge"] = charge
    record = await front_end.build().execute(NAME, timeout=WAIT)
    assert record.steps["charge"].attempt_errors == ["busy", "declined"]
    assert record.status is SagaStatus.COMPENSATED


async def test_attempt_timeout_is_a_transient_failure(front_end: FrontEnd) -> None:
    """An attempt over its timeout is cancelled and retried."""

    async def charge(ctx: SagaContext) -> object:
        if ctx.attempt == 1:
            return await block_forever(ctx)
        return None

    front_end.script.behaviours["charge"] = charge
    runtime = front_end.build(tuning={"charge": Tuning(timeout=0.01)})
    record = await runtime.execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert record.steps["charge"].attempts == 2
    assert "timed out after 0.01s" in record.steps["charge"].attempt_errors[0]


async def test_compensation_runs_in_reverse_completion_order(front_end: FrontEnd) -> None:
    """A failing last step undoes charge, then reserve; it is not compensated itself."""

    async def confirm(ctx: SagaContext) -> object:
        return SagaStepResult.fail("out of stock")

    front_end.script.behaviours["confirm"] = confirm
    record = await front_end.build().execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "step 'confirm' failed: out of stock"
    assert front_end.script.calls[-2:] == ["undo charge", "undo reserve"]
    assert record.steps["reserve"].status is SagaStepStatus.COMPENSATED
    assert record.steps["charge"].status is SagaStepStatus.COMPENSATED
    assert record.steps["confirm"].status is SagaStepStatus.FAILED


async def test_failing_compensation_ends_failed_naming_the_step(front_end: FrontEnd) -> None:
    """A compensation that gives up leaves the saga FAILED; the others still run."""
    front_end.script.behaviours["confirm"] = fail_with(ValueError("no"))
    front_end.script.undo_behaviours["charge"] = fail_with(*(OSError() for _ in range(10)))
    record = await front_end.build().execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.FAILED
    assert "'charge'" in (record.error or "")
    assert record.steps["charge"].compensation_attempts == 4  # config default: 3 retries
    assert record.steps["reserve"].status is SagaStepStatus.COMPENSATED


async def test_cancel_mid_step_compensates(front_end: FrontEnd) -> None:
    """Cancelling stops the running step, undoes completed steps, ends COMPENSATED."""
    entered = asyncio.Event()

    async def charge(ctx: SagaContext) -> object:
        entered.set()
        return await block_forever(ctx)

    front_end.script.behaviours["charge"] = charge
    runtime = front_end.build()
    saga_id = await runtime.start(NAME)
    await entered.wait()
    record = await runtime.cancel(saga_id, reason="customer changed their mind")
    assert record.status is SagaStatus.COMPENSATED
    assert "customer changed their mind" in (record.error or "")
    assert record.steps["charge"].status is SagaStepStatus.FAILED
    assert "confirm" not in record.steps
    assert front_end.script.calls == ["reserve:1", "charge:1", "undo reserve"]


async def test_saga_deadline_compensates(front_end: FrontEnd) -> None:
    """When the saga's deadline passes, the running step stops and the saga compensates."""
    front_end.script.behaviours["charge"] = block_forever
    runtime = front_end.build(config=SagaConfig(default_timeout_seconds=0.02))
    record = await runtime.execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert "timed out" in (record.error or "")
    assert front_end.script.calls == ["reserve:1", "charge:1", "undo reserve"]


async def test_idempotent_start(front_end: FrontEnd) -> None:
    """Starting an existing saga id again, even concurrently, runs the saga once."""
    runtime = front_end.build()
    ids = await asyncio.gather(*(runtime.start(NAME, saga_id="order-42") for _ in range(3)))
    assert ids == ["order-42"] * 3
    await runtime.wait("order-42", timeout=WAIT)
    assert await runtime.start(NAME, saga_id="order-42") == "order-42"
    await runtime.wait("order-42", timeout=WAIT)
    assert front_end.script.calls == ["reserve:1", "charge:1", "confirm:1"]


async def test_crash_resumes_after_the_last_durable_step(front_end: FrontEnd) -> None:
    """A worker dying after the first step's write is recovered; that step never re-runs."""
    store = InMemorySagaStore()
    crashing = front_end.build(store=FaultyStore(store, crash_after_write=2), worker_id="w")
    saga_id = await crashing.start(NAME)
    # Await the dead run's task (named by the engine) so its crash is observed, not logged.
    task = next(t for t in asyncio.all_tasks() if t.get_name() == f"saga:{saga_id}")
    with pytest.raises(SimulatedCrash):
        await task
    restarted = front_end.build(store=store, worker_id="w")
    assert await restarted.recover() == 1
    record = await restarted.wait(saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert front_end.script.calls == ["reserve:1", "charge:1", "confirm:1"]


async def test_idempotency_key_is_stable_across_retries(front_end: FrontEnd) -> None:
    """Every attempt of a step sees the same key; its compensation has its own."""
    keys: list[str | None] = []

    async def charge(ctx: SagaContext) -> object:
        keys.append(ctx.idempotency_key)
        if ctx.attempt < 2:
            raise ConnectionError
        return None

    async def refund(ctx: SagaContext) -> object:
        keys.append(ctx.idempotency_key)
        return None

    front_end.script.behaviours["charge"] = charge
    front_end.script.undo_behaviours["charge"] = refund
    front_end.script.behaviours["confirm"] = fail_with(ValueError())
    await front_end.build().execute(NAME, saga_id="s-1", timeout=WAIT)
    step_key = idempotency_key("s-1", "charge", 1, compensation=False)
    undo_key = idempotency_key("s-1", "charge", 1, compensation=True)
    assert keys == [step_key, step_key, undo_key]
    assert step_key.startswith("s-1:charge:step:")
    assert undo_key.startswith("s-1:charge:compensate:")


def _trace(bus: InMemoryEventBus) -> list[tuple[str, str | None]]:
    """The lifecycle events in order, leaving out the attempts' ``SagaStepStarted``."""
    return [
        (event.event_type, event.step_name)
        for event in bus.published
        if isinstance(event, SagaEvent) and event.event_type != "SagaStepStarted"
    ]


async def test_lifecycle_events_of_a_completed_saga(front_end: FrontEnd) -> None:
    """A completed saga publishes the same events, in the same order, on both front-ends."""
    bus = InMemoryEventBus(record=True)
    await front_end.build(event_bus=bus).execute(NAME, timeout=WAIT)
    assert _trace(bus) == [
        ("SagaStarted", None),
        ("SagaStepCompleted", "reserve"),
        ("SagaStepCompleted", "charge"),
        ("SagaStepCompleted", "confirm"),
        ("SagaCompleted", None),
    ]


async def test_lifecycle_events_of_a_compensated_saga(front_end: FrontEnd) -> None:
    """Retries, the failure and each compensation are announced in order."""
    bus = InMemoryEventBus(record=True)
    front_end.script.behaviours["charge"] = fail_with(ConnectionError())
    front_end.script.behaviours["confirm"] = fail_with(ValueError())
    await front_end.build(event_bus=bus).execute(NAME, timeout=WAIT)
    assert _trace(bus) == [
        ("SagaStarted", None),
        ("SagaStepCompleted", "reserve"),
        ("SagaStepFailed", "charge"),
        ("SagaStepCompleted", "charge"),
        ("SagaStepFailed", "confirm"),
        ("SagaCompensating", None),
        ("SagaStepCompensated", "charge"),
        ("SagaStepCompensated", "reserve"),
        ("SagaCompensated", None),
    ]
    failed = [event for event in bus.published if event.event_type == "SagaStepFailed"]
    assert [getattr(event, "will_retry", None) for event in failed] == [True, False]
    started = [
        (event.step_name, event.attempt)
        for event in bus.published
        if isinstance(event, SagaStepStarted)
    ]
    assert started == [("reserve", 1), ("charge", 1), ("charge", 2), ("confirm", 1)]


async def test_context_changes_reach_later_steps_and_compensations(front_end: FrontEnd) -> None:
    """Data a step writes is seen by later steps and compensations, and stored."""
    seen: list[object] = []

    async def reserve(ctx: SagaContext) -> object:
        ctx["reservation"] = "r-9"
        return None

    async def release(ctx: SagaContext) -> object:
        seen.append(ctx["reservation"])
        return None

    front_end.script.behaviours["reserve"] = reserve
    front_end.script.undo_behaviours["reserve"] = release
    front_end.script.behaviours["charge"] = fail_with(ValueError())
    record = await front_end.build().execute(NAME, timeout=WAIT)
    assert seen == ["r-9"]
    assert record.data == {"reservation": "r-9"}


async def test_compensation_disabled_ends_failed_without_undoing(front_end: FrontEnd) -> None:
    """With ``enable_compensation=False`` a failure ends the saga FAILED directly."""
    front_end.script.behaviours["confirm"] = fail_with(ValueError())
    runtime = front_end.build(config=SagaConfig(enable_compensation=False))
    record = await runtime.execute(NAME, timeout=WAIT)
    assert record.status is SagaStatus.FAILED
    assert not [call for call in front_end.script.calls if call.startswith("undo")]
