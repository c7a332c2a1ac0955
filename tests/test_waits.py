"""Durable waits on the in-memory store: signals, timeouts, delays, polling steps.

SPEC section 11, "Durable waits, signals and timers". The same on SQLite and PostgreSQL,
across processes, is in ``tests/scenarios/test_wait_processes.py``; the stores' part is the
conformance suite (``testing.contract.SignalContract``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from lexigram.events import InMemoryEventBus
from lexigram.events.sagas import (
    InMemorySagaStore,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaDataError,
    SagaDefinitionError,
    SagaManager,
    SagaNotFoundError,
    SagaStatus,
    SagaStepResult,
    SagaStepStatus,
    saga_step,
)
from lexigram.events.sagas.errors import SagaFinishedError
from lexigram.events.sagas.events import SagaEvent, SagaWaiting
from lexigram.events.sagas.orchestrator import (
    OrchestratedStep,
    SagaOrchestrator,
)
from lexigram.events.sagas.testing import ManualClock, SimulatedCrash, StoreCall, StoreWrapper
from tests.support.helpers import OrderPlaced

FAST = SagaConfig(retry_delay_seconds=0, shutdown_timeout=1, default_timeout_seconds=86400)


@contextlib.asynccontextmanager
async def serving(manager: Any, poll: float = 0.02) -> AsyncIterator[None]:
    """Run ``manager.serve()`` in the background; stop it on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(manager.serve(stop=stop, poll_interval=poll))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def until_parked(manager: Any, saga_id: str, timeout: float = 5) -> Any:
    """Wait until the saga is stored parked; return its record."""
    async with asyncio.timeout(timeout):
        while True:
            record = await manager.get(saga_id)
            if record is not None and record.waiting is not None and record.lease_owner is None:
                return record
            await asyncio.sleep(0.005)


class Log:
    """What the steps of a test saw."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.signals: list[Any] = []


def expense_saga(
    log: Log, *, wait_timeout: float | None = None, delay: float | None = None
) -> type[SagaBase]:
    class Expense(SagaBase):
        name = "expense"

        @saga_step("submit")
        async def submit(self, ctx: SagaContext) -> None:
            log.calls.append("submit")

        @saga_step("submit", compensation=True)
        async def unsubmit(self, ctx: SagaContext) -> None:
            log.calls.append("undo submit")

        @saga_step("approve", wait_for="approval", wait_timeout=wait_timeout, delay=delay)
        async def approve(self, ctx: SagaContext) -> SagaStepResult:
            log.calls.append("approve")
            log.signals.append(ctx.signal)
            assert ctx.signal is not None
            if not ctx.signal.get("ok"):
                return SagaStepResult.fail("rejected by " + str(ctx.signal.get("by")))
            return SagaStepResult.Ok({"approved_by": ctx.signal.get("by")})

        @saga_step("pay")
        async def pay(self, ctx: SagaContext) -> None:
            log.calls.append("pay")
            log.signals.append(ctx.signal)

    return Expense


# ------------------------------------------------------------------ parking and signals


async def test_a_waiting_saga_parks_and_a_signal_resumes_it() -> None:
    """Parked: stored, free, listed as waiting, nothing held here; the signal completes it."""
    log = Log()
    bus = InMemoryEventBus()
    seen: list[SagaEvent] = []

    async def note(event: SagaEvent) -> None:
        seen.append(event)

    bus.subscribe(SagaEvent, note)
    manager = SagaManager(config=FAST, event_bus=bus)
    manager.register(expense_saga(log, wait_timeout=60))
    async with serving(manager):
        saga_id = await manager.start("expense", {"amount": 120})
        record = await until_parked(manager, saga_id)
        assert record.status is SagaStatus.RUNNING
        assert record.waiting.step == "approve"
        assert record.waiting.kind == "signal"
        assert record.waiting.signal == "approval"
        assert record.waiting.until is not None
        assert record.not_before == record.waiting.until
        await asyncio.sleep(0.05)  # the run ends right after its park write
        assert manager.running() == ()
        assert [r.saga_id for r in await manager.list(waiting=True)] == [saga_id]
        assert await manager.signal(saga_id, "approval", {"ok": True, "by": "ann"})
        final = await manager.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert final.waiting is None
    assert log.calls == ["submit", "approve", "pay"]
    assert log.signals == [{"ok": True, "by": "ann"}, None]  # only the waiting step sees it
    assert final.steps["approve"].output == {"approved_by": "ann"}
    assert final.steps["approve"].signal_seq == 1
    waiting = [e for e in seen if isinstance(e, SagaWaiting)]
    assert len(waiting) == 1
    assert (waiting[0].step_name, waiting[0].signal, waiting[0].kind) == (
        "approve",
        "approval",
        "signal",
    )
    assert await manager.list(waiting=True) == []
    await manager.close()


async def test_a_signal_sent_before_the_wait_is_kept_and_taken_without_parking() -> None:
    """A signal that arrives while an earlier step runs is taken at once: no park."""
    log = Log()
    manager = SagaManager(config=FAST)
    manager.register(expense_saga(log))
    saga_id = "early"
    await manager.enqueue("expense", {}, saga_id)
    assert await manager.signal(saga_id, "approval", {"ok": True, "by": "bo"})
    async with serving(manager):
        final = await manager.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert log.signals[0] == {"ok": True, "by": "bo"}
    await manager.close()


async def test_a_duplicate_signal_is_dropped() -> None:
    """The same ``signal_id`` twice is one signal; the second send returns ``False``."""
    log = Log()
    manager = SagaManager(config=FAST)
    manager.register(expense_saga(log))
    await manager.enqueue("expense", {}, "dup")
    assert await manager.signal("dup", "approval", {"ok": False, "by": "x"}, signal_id="s1")
    assert not await manager.signal("dup", "approval", {"ok": True}, signal_id="s1")
    async with serving(manager):
        final = await manager.wait("dup", timeout=5)
    assert final.status is SagaStatus.COMPENSATED
    assert final.error is not None
    assert "rejected by x" in final.error
    assert log.calls == ["submit", "approve", "undo submit"]
    # a sender retrying after the saga ended is told it was a duplicate, not an error
    assert not await manager.signal("dup", "approval", {}, signal_id="s1")
    with pytest.raises(SagaFinishedError, match="compensated"):
        await manager.signal("dup", "approval", {}, signal_id="s2")
    await manager.close()


async def test_bad_signals_get_clear_errors() -> None:
    """Unknown saga, bad name, bad id, unstorable payload: each named, nothing stored."""
    manager = SagaManager(config=FAST)
    manager.register(expense_saga(Log()))
    await manager.enqueue("expense", {}, "s-1")
    with pytest.raises(SagaNotFoundError, match="nope"):
        await manager.signal("nope", "approval")
    with pytest.raises(ValueError, match="signal name"):
        await manager.signal("s-1", "")
    with pytest.raises(ValueError, match="signal_id"):
        await manager.signal("s-1", "approval", signal_id="x" * 201)
    with pytest.raises(SagaDataError, match="when"):
        await manager.signal("s-1", "approval", {"when": object()})
    with pytest.raises(SagaDataError, match="signal payload"):
        await manager.signal("s-1", "approval", [1, 2])  # type: ignore[arg-type]
    assert await manager.store.next_signal("s-1", "approval", 0) is None
    await manager.close()


async def test_a_parked_saga_survives_its_worker_and_resumes_elsewhere() -> None:
    """The worker that parked it closes; another worker, on the same store, finishes it."""
    log = Log()
    store = InMemorySagaStore()
    first = SagaManager(store, config=FAST, worker_id="first")
    first.register(expense_saga(log))
    async with serving(first):
        saga_id = await first.start("expense", {})
        await until_parked(first, saga_id)
    await first.close()
    second = SagaManager(store, config=FAST, worker_id="second")
    second.register(expense_saga(log))
    await second.signal(saga_id, "approval", {"ok": True, "by": "cy"})
    async with serving(second):
        final = await second.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert final.previous_owner is None  # it was free: parked, not crashed
    assert log.calls == ["submit", "approve", "pay"]
    await second.close()


# ------------------------------------------------------------------ timeouts and races


async def test_a_wait_that_times_out_fails_the_step_and_compensates() -> None:
    """``wait_timeout`` passes first: ``failure.kind == "timeout"``, earlier steps undone."""
    clock = ManualClock()
    log = Log()
    store = InMemorySagaStore(clock=clock)
    manager = SagaManager(store, config=FAST, clock=clock)
    manager.register(expense_saga(log, wait_timeout=3600))
    async with serving(manager):
        saga_id = await manager.start("expense", {})
        await until_parked(manager, saga_id)
        clock.advance(3601)
        final = await manager.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPENSATED
    assert final.failure is not None
    assert (final.failure.kind, final.failure.step) == ("timeout", "approve")
    assert "no signal 'approval' within 3600s" in final.failure.message
    assert final.steps["approve"].status is SagaStepStatus.FAILED
    assert log.calls == ["submit", "undo submit"]
    await manager.close()


async def test_a_signal_after_the_timeout_loses_even_if_the_worker_is_late() -> None:
    """Exactly one wins: a signal stored after the timeout does not count."""
    clock = ManualClock()
    log = Log()
    store = InMemorySagaStore(clock=clock)
    manager = SagaManager(store, config=FAST, clock=clock)
    manager.register(expense_saga(log, wait_timeout=60))
    saga_id = await manager.start("expense", {})
    await until_parked(manager, saga_id)
    clock.advance(61)
    await manager.signal(saga_id, "approval", {"ok": True})  # too late
    async with serving(manager):
        final = await manager.wait(saga_id, timeout=5)
    assert final.failure is not None
    assert final.failure.kind == "timeout"
    assert "approve" not in log.calls
    await manager.close()


async def test_a_signal_before_the_timeout_wins_even_if_the_worker_is_late() -> None:
    """A signal stored in time counts, though no worker looked until after the timeout."""
    clock = ManualClock()
    log = Log()
    store = InMemorySagaStore(clock=clock)
    manager = SagaManager(store, config=FAST, clock=clock)
    manager.register(expense_saga(log, wait_timeout=60))
    saga_id = await manager.start("expense", {})
    await until_parked(manager, saga_id)
    clock.advance(30)
    await manager.signal(saga_id, "approval", {"ok": True, "by": "in time"})
    clock.advance(60)
    async with serving(manager):
        final = await manager.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert log.signals[0] == {"ok": True, "by": "in time"}
    await manager.close()


async def test_a_parked_saga_can_be_cancelled_from_another_process() -> None:
    """Cancel applies while parked: a client asks, a worker claims it and compensates."""
    log = Log()
    store = InMemorySagaStore()
    worker = SagaManager(store, config=FAST, worker_id="worker")
    worker.register(expense_saga(log))
    client = SagaManager(store, config=FAST, worker_id="client")
    client.register(expense_saga(log))
    async with serving(worker):
        saga_id = await worker.start("expense", {})
        await until_parked(worker, saga_id)
        asked = await client.cancel(saga_id, reason="expense withdrawn")
        assert asked.cancel_requested_at is not None
        final = await client.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPENSATED
    assert final.failure is not None
    assert final.failure.kind == "cancelled"
    assert log.calls == ["submit", "undo submit"]
    await worker.close()
    await client.close()


async def test_the_deadline_applies_while_parked() -> None:
    """A saga parked past its deadline is claimed at the deadline and compensated."""
    clock = ManualClock()
    log = Log()
    store = InMemorySagaStore(clock=clock)
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=1, default_timeout_seconds=600)
    manager = SagaManager(store, config=config, clock=clock)
    manager.register(expense_saga(log, wait_timeout=3600))
    saga_id = await manager.start("expense", {})
    parked = await until_parked(manager, saga_id)
    assert parked.not_before == parked.deadline_at  # the deadline comes first
    clock.advance(601)
    async with serving(manager):
        final = await manager.wait(saga_id, timeout=5)
    assert final.failure is not None
    assert final.failure.kind == "deadline"
    assert log.calls == ["submit", "undo submit"]
    await manager.close()


# ------------------------------------------------------------------ delays and polling


async def test_a_delayed_step_runs_no_earlier_than_its_delay() -> None:
    """``delay=``: parked until the delay after the previous step passed."""
    clock = ManualClock()
    log = Log()
    store = InMemorySagaStore(clock=clock)
    manager = SagaManager(store, config=FAST, clock=clock)

    class Cooling(SagaBase):
        name = "cooling"

        @saga_step("order")
        async def order(self, ctx: SagaContext) -> None:
            log.calls.append("order")

        @saga_step("charge", delay=3600)
        async def charge(self, ctx: SagaContext) -> None:
            log.calls.append("charge")

    manager.register(Cooling)
    async with serving(manager):
        saga_id = await manager.start("cooling", {})
        record = await until_parked(manager, saga_id)
        assert record.waiting.kind == "delay"
        assert record.waiting.until - record.steps["charge"].started_at == timedelta(hours=1)
        clock.advance(3599)
        await asyncio.sleep(0.1)
        assert log.calls == ["order"]
        clock.advance(2)
        final = await manager.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert log.calls == ["order", "charge"]
    await manager.close()


async def test_retry_after_polls_without_spending_retries() -> None:
    """A polling step runs again later; ``max_retries=0`` is never spent on it."""
    log = Log()
    manager = SagaManager(config=FAST)

    class Polling(SagaBase):
        name = "polling"

        @saga_step("check", max_retries=0, wait_timeout=30)
        async def check(self, ctx: SagaContext) -> SagaStepResult:
            log.calls.append(f"check {ctx.attempt}")
            ctx["polls"] = ctx.get("polls", 0) + 1
            if ctx["polls"] < 4:
                return SagaStepResult.retry_after(0.01)
            return SagaStepResult.Ok({"polls": ctx["polls"]})

    manager.register(Polling)
    async with serving(manager):
        saga_id = await manager.start("polling", {})
        final = await manager.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert final.steps["check"].output == {"polls": 4}
    assert final.steps["check"].attempts == 1  # polls are not attempts
    assert final.data["polls"] == 4  # each poll's context changes were stored
    await manager.close()


async def test_polling_is_bounded_by_wait_timeout() -> None:
    """A step that keeps asking to poll fails with ``kind="timeout"`` at ``wait_timeout``."""
    clock = ManualClock()
    store = InMemorySagaStore(clock=clock)
    manager = SagaManager(store, config=FAST, clock=clock)

    class Forever(SagaBase):
        name = "forever"

        @saga_step("check", wait_timeout=100)
        async def check(self, ctx: SagaContext) -> SagaStepResult:
            return SagaStepResult.retry_after(60)

    manager.register(Forever)
    async with serving(manager):
        saga_id = await manager.start("forever", {})
        first = await until_parked(manager, saga_id)
        assert first.waiting.kind == "poll"
        clock.advance(61)
        await asyncio.sleep(0.1)
        second = await until_parked(manager, saga_id)
        assert second.waiting.until == second.steps["check"].started_at + timedelta(seconds=100)
        clock.advance(40)
        final = await manager.wait(saga_id, timeout=5)
    assert final.failure is not None
    assert final.failure.kind == "timeout"
    assert "still polling after 100s" in final.failure.message
    await manager.close()


def test_retry_after_refuses_bad_seconds() -> None:
    """``retry_after`` takes a number of seconds from 0 to ten years."""
    assert SagaStepResult.retry_after(5).retry_after_seconds == 5.0
    with pytest.raises(TypeError, match="number"):
        SagaStepResult.retry_after("5")  # type: ignore[arg-type]
    for bad in (-1, float("nan"), float("inf"), 1e12):
        with pytest.raises(ValueError, match="retry_after"):
            SagaStepResult.retry_after(bad)


# ------------------------------------------------------------------ definitions


def test_wait_settings_are_validated_at_definition() -> None:
    """Bad names and durations, and waits on compensations, are refused with the step."""
    with pytest.raises(SagaDefinitionError, match="wait_for"):
        saga_step("a", wait_for="")
    with pytest.raises(SagaDefinitionError, match="wait_for"):
        saga_step("a", wait_for="x" * 201)
    with pytest.raises(SagaDefinitionError, match="wait_timeout"):
        saga_step("a", wait_for="s", wait_timeout=-1)
    with pytest.raises(SagaDefinitionError, match="delay"):
        saga_step("a", delay=float("nan"))
    with pytest.raises(SagaDefinitionError, match="compensation"):
        saga_step("a", compensation=True, wait_for="s")


def test_parallel_steps_cannot_wait() -> None:
    """A parallel group and its children cannot wait: the definition says so."""

    async def noop(ctx: SagaContext) -> None:
        return None

    orchestrator = SagaOrchestrator()
    with pytest.raises(SagaDefinitionError, match="cannot wait"):
        orchestrator.define(
            "p",
            [
                OrchestratedStep(
                    "group",
                    parallel=[
                        OrchestratedStep("left", noop, wait_for="go"),
                        OrchestratedStep("right", noop),
                    ],
                )
            ],
        )


# ------------------------------------------------------------------ orchestrated flows


def approval_flow(orchestrator: SagaOrchestrator, log: Log) -> None:
    async def submit(ctx: SagaContext) -> None:
        log.calls.append("submit")

    async def decide(ctx: SagaContext) -> dict[str, Any]:
        assert ctx.signal is not None
        log.calls.append(f"decide {ctx.signal['decision']}")
        return {"decision": ctx.signal["decision"]}

    async def ship(ctx: SagaContext) -> None:
        log.calls.append("ship")

    async def refund(ctx: SagaContext) -> None:
        log.calls.append("refund")

    async def escalate(ctx: SagaContext) -> None:
        log.calls.append("escalate")

    def route(ctx: SagaContext) -> str:
        assert ctx.signal is not None
        return "ship" if ctx.signal["decision"] == "approve" else "refund"

    orchestrator.define(
        "approval",
        [
            OrchestratedStep("submit", submit, next_step="decide"),
            OrchestratedStep(
                "decide",
                decide,
                next_step=route,
                on_failure="escalate",
                wait_for="decision",
                wait_timeout=3600,
            ),
            OrchestratedStep("ship", ship),
            OrchestratedStep("refund", refund),
            OrchestratedStep("escalate", escalate),
        ],
    )


@pytest.mark.parametrize(("decision", "branch"), [("approve", "ship"), ("reject", "refund")])
async def test_a_transition_after_a_wait_branches_on_the_signal(decision: str, branch: str) -> None:
    """Approve -> ship, reject -> refund: the transition reads ``ctx.signal``."""
    log = Log()
    orchestrator = SagaOrchestrator(config=FAST)
    approval_flow(orchestrator, log)
    async with serving(orchestrator):
        saga_id = await orchestrator.start("approval", {})
        await until_parked(orchestrator, saga_id)
        await orchestrator.signal(saga_id, "decision", {"decision": decision})
        final = await orchestrator.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert log.calls == ["submit", f"decide {decision}", branch]
    await orchestrator.close()


async def test_a_wait_timeout_takes_on_failure() -> None:
    """The wait times out: ``on_failure`` leads to the escalation step."""
    clock = ManualClock()
    log = Log()
    store = InMemorySagaStore(clock=clock)
    orchestrator = SagaOrchestrator(store, config=FAST, clock=clock)
    approval_flow(orchestrator, log)
    async with serving(orchestrator):
        saga_id = await orchestrator.start("approval", {})
        await until_parked(orchestrator, saga_id)
        clock.advance(3601)
        final = await orchestrator.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert log.calls == ["submit", "escalate"]
    assert final.steps["decide"].status is SagaStepStatus.FAILED
    await orchestrator.close()


async def test_a_step_visited_again_waits_for_a_new_signal() -> None:
    """Each visit of a waiting step takes its own signal, in arrival order."""
    log = Log()
    orchestrator = SagaOrchestrator(config=FAST)

    async def review(ctx: SagaContext) -> None:
        assert ctx.signal is not None
        log.signals.append(ctx.signal["round"])
        ctx["rounds"] = ctx.get("rounds", 0) + 1

    def again(ctx: SagaContext) -> str | None:
        return "review" if ctx["rounds"] < 3 else None

    orchestrator.define(
        "reviews",
        [OrchestratedStep("review", review, next_step=again, wait_for="round")],
    )
    saga_id = await orchestrator.enqueue("reviews", {})
    for index in range(4):
        await orchestrator.signal(saga_id, "round", {"round": index})
    async with serving(orchestrator):
        final = await orchestrator.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert log.signals == [0, 1, 2]
    await orchestrator.close()


# ------------------------------------------------------------------ signal_on


async def test_signal_on_turns_bus_events_into_signals() -> None:
    """A reply event on the bus becomes the signal; a redelivered event is one signal."""
    log = Log()
    bus = InMemoryEventBus()
    manager = SagaManager(config=FAST, event_bus=bus)
    manager.register(expense_saga(log))
    manager.signal_on(
        OrderPlaced,
        "approval",
        saga_id=lambda event: event.order_id,
        payload=lambda event: {"ok": True, "by": "bus"},
    )
    await manager.enqueue("expense", {}, "o-7")
    event = OrderPlaced(order_id="o-7")
    await bus.publish(event)
    await bus.publish(event)  # delivered twice: deduplicated by event_id
    second = await manager.store.next_signal("o-7", "approval", 1)
    assert second is None
    async with serving(manager):
        final = await manager.wait("o-7", timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert log.signals[0] == {"ok": True, "by": "bus"}
    await manager.close()


# ------------------------------------------------------------------ crashes and races


async def test_a_visit_keeps_its_signal_across_retries_and_a_crash() -> None:
    """A retried or resumed visit runs with the signal it took, not a newer one."""
    seen: list[Any] = []
    store = InMemorySagaStore()

    class Fragile(SagaBase):
        name = "fragile"

        @saga_step("approve", wait_for="approval", max_retries=3)
        async def approve(self, ctx: SagaContext) -> None:
            seen.append(ctx.signal)
            if len(seen) == 1:
                raise ConnectionError("flaky")  # retried: the failed attempt is stored
            if len(seen) == 2:
                raise SimulatedCrash  # the worker dies mid-visit

    first = SagaManager(store, config=FAST, worker_id="w")
    first.register(Fragile)
    saga_id = await first.enqueue("fragile", {})
    await first.signal(saga_id, "approval", {"n": 1})
    async with serving(first):
        async with asyncio.timeout(5):
            while len(seen) < 2:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
    await first.close()
    await first.signal(saga_id, "approval", {"n": 2})  # a newer signal waits meanwhile
    second = SagaManager(store, config=FAST, worker_id="w")  # the restarted worker
    second.register(Fragile)
    async with serving(second):
        final = await second.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    assert seen == [{"n": 1}, {"n": 1}, {"n": 1}]
    assert final.steps["approve"].signal_seq == 1
    await second.close()


class SignalWhilePark(StoreWrapper):
    """Delivers a signal to the inner store just before the saga's park write lands."""

    def __init__(self, inner: InMemorySagaStore) -> None:
        super().__init__(inner)
        self.raced = False

    async def forward(self, call: StoreCall[Any]) -> Any:
        record = call.arguments.get("record")
        parking = call.method == "save" and record is not None and record.waiting is not None
        if parking and record is not None and not self.raced:
            self.raced = True
            await self.inner.send_signal(record.saga_id, "approval", {"ok": True}, "race")
        return await call.send(self.inner)


async def test_a_signal_racing_the_park_write_is_not_lost() -> None:
    """A signal stored while the worker still holds the saga wakes it after the park."""
    log = Log()
    store = SignalWhilePark(InMemorySagaStore())
    manager = SagaManager(store, config=FAST)
    manager.register(expense_saga(log))
    async with serving(manager, poll=30):  # no polling: only the wake-up can resume it
        saga_id = await manager.start("expense", {})
        final = await manager.wait(saga_id, timeout=5)
    assert store.raced
    assert final.status is SagaStatus.COMPLETED
    assert log.signals[0] == {"ok": True}
    await manager.close()


async def test_a_saga_that_persists_no_progress_still_parks_durably() -> None:
    """``persist_state=False`` skips progress writes, never the park (it frees the saga)."""
    log = Log()
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=1, persist_state=False)
    manager = SagaManager(config=config)
    manager.register(expense_saga(log))
    async with serving(manager):
        saga_id = await manager.start("expense", {})
        await until_parked(manager, saga_id)
        await manager.signal(saga_id, "approval", {"ok": True})
        final = await manager.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    await manager.close()


async def test_retry_after_in_a_parallel_step_fails_it() -> None:
    """A parallel child cannot park: ``retry_after`` there fails the step, by name."""
    orchestrator = SagaOrchestrator(config=FAST)

    async def polls(ctx: SagaContext) -> SagaStepResult:
        return SagaStepResult.retry_after(1)

    async def fine(ctx: SagaContext) -> None:
        return None

    orchestrator.define(
        "par",
        [
            OrchestratedStep(
                "group",
                parallel=[OrchestratedStep("left", polls), OrchestratedStep("right", fine)],
            )
        ],
    )
    final = await orchestrator.execute("par", {}, timeout=5)
    assert final.status is SagaStatus.COMPENSATED
    assert final.steps["left"].status is SagaStepStatus.FAILED
    assert "retry_after" in (final.steps["left"].error or "")
    await orchestrator.close()


async def test_resume_leaves_a_parked_saga_parked() -> None:
    """``resume()`` of a saga that waits is a no-op: it resumes when its wait ends."""
    log = Log()
    manager = SagaManager(config=FAST)
    manager.register(expense_saga(log))
    async with serving(manager):
        saga_id = await manager.start("expense", {})
        await until_parked(manager, saga_id)
    await manager.resume(saga_id)
    record = await manager.get(saga_id)
    assert record is not None
    assert record.waiting is not None
    assert record.lease_owner is None
    assert log.calls == ["submit"]
    await manager.close()
