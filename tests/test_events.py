"""Saga lifecycle events published by the engine (SPEC section 8)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lexigram.events import DomainEvent, InMemoryEventBus
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaStepResult
from lexigram.events.sagas.events import (
    SagaCancelRequested,
    SagaCompensated,
    SagaCompensating,
    SagaCompleted,
    SagaEvent,
    SagaFailed,
    SagaResumed,
    SagaStarted,
    SagaStepCompensated,
    SagaStepCompleted,
    SagaStepFailed,
    SagaStepStarted,
)
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    RaisingBus,
    Script,
    Tuning,
    await_crash,
    crash_first,
    manager_for,
    raise_each,
    returning,
)

FAST = SagaConfig(retry_delay_seconds=0)


def trace(bus: InMemoryEventBus) -> list[tuple[str, str | None]]:
    """The lifecycle events in order, leaving out the attempts' ``SagaStepStarted``."""
    return [
        (event.event_type, event.step_name)
        for event in bus.published
        if isinstance(event, SagaEvent) and not isinstance(event, SagaStepStarted)
    ]


def saga_events(bus: InMemoryEventBus) -> list[SagaEvent]:
    return [event for event in bus.published if isinstance(event, SagaEvent)]


def test_every_lifecycle_event_is_a_saga_event() -> None:
    """All lifecycle events share the ``SagaEvent`` base, itself a ``DomainEvent``."""
    for event_type in (
        SagaStarted,
        SagaStepCompleted,
        SagaStepFailed,
        SagaCompensating,
        SagaStepCompensated,
        SagaCompleted,
        SagaCompensated,
        SagaFailed,
    ):
        assert issubclass(event_type, SagaEvent)
    assert issubclass(SagaEvent, DomainEvent)


def test_lifecycle_event_fields() -> None:
    """A lifecycle event carries saga id, name, correlation id and step."""
    event = SagaStepFailed(
        saga_id="s", saga_name="n", correlation_id="c", step_name="b", attempt=2, error="e"
    )
    assert (event.saga_id, event.saga_name, event.correlation_id) == ("s", "n", "c")
    assert (event.step_name, event.attempt, event.error, event.will_retry) == ("b", 2, "e", False)


async def test_completed_saga_event_sequence() -> None:
    """Started, each step completed, completed."""
    bus = InMemoryEventBus(record=True)
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    assert trace(bus) == [
        ("SagaStarted", None),
        ("SagaStepCompleted", "a"),
        ("SagaStepCompleted", "b"),
        ("SagaStepCompleted", "c"),
        ("SagaCompleted", None),
    ]
    await manager.close()


async def test_compensated_saga_event_sequence() -> None:
    """The failure, the compensating phase and each compensation are announced in order."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["c"] = returning(SagaStepResult.fail("declined"))
    manager = manager_for(script, config=FAST, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    assert trace(bus) == [
        ("SagaStarted", None),
        ("SagaStepCompleted", "a"),
        ("SagaStepCompleted", "b"),
        ("SagaStepFailed", "c"),
        ("SagaCompensating", None),
        ("SagaStepCompensated", "b"),
        ("SagaStepCompensated", "a"),
        ("SagaCompensated", None),
    ]
    await manager.close()


async def test_failed_saga_event_sequence() -> None:
    """A compensation that gives up ends the sequence with ``SagaFailed``."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["c"] = returning(SagaStepResult.fail("declined"))
    script.undo_behaviours["a"] = raise_each(*(RuntimeError() for _ in range(5)))
    manager = manager_for(
        script, config=FAST, event_bus=bus, tuning={"a": Tuning(undo_max_retries=0)}
    )
    await manager.execute("scripted", timeout=WAIT)
    assert trace(bus) == [
        ("SagaStarted", None),
        ("SagaStepCompleted", "a"),
        ("SagaStepCompleted", "b"),
        ("SagaStepFailed", "c"),
        ("SagaCompensating", None),
        ("SagaStepCompensated", "b"),
        ("SagaFailed", None),
    ]
    await manager.close()


async def test_compensation_disabled_publishes_failed() -> None:
    """With compensation disabled a failure goes straight to ``SagaFailed``."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["b"] = returning(SagaStepResult.fail("declined"))
    config = SagaConfig(retry_delay_seconds=0, enable_compensation=False)
    manager = manager_for(script, config=config, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    assert trace(bus) == [
        ("SagaStarted", None),
        ("SagaStepCompleted", "a"),
        ("SagaStepFailed", "b"),
        ("SagaFailed", None),
    ]
    await manager.close()


async def test_retries_are_announced_with_attempt_and_will_retry() -> None:
    """Each failed attempt is announced, saying whether another attempt follows."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["b"] = raise_each(ConnectionError("1"), ConnectionError("2"))
    manager = manager_for(script, config=FAST, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    failed = [e for e in bus.published if isinstance(e, SagaStepFailed)]
    completed = [e for e in bus.published if isinstance(e, SagaStepCompleted)]
    assert [(e.step_name, e.attempt, e.will_retry) for e in failed] == [
        ("b", 1, True),
        ("b", 2, True),
    ]
    assert failed[0].error == "ConnectionError: 1"
    assert [(e.step_name, e.attempt) for e in completed] == [("a", 1), ("b", 3), ("c", 1)]
    await manager.close()


async def test_last_failed_attempt_says_no_retry() -> None:
    """The attempt that exhausts the retries is announced with ``will_retry=False``."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["b"] = raise_each(*(RuntimeError() for _ in range(5)))
    manager = manager_for(script, config=FAST, event_bus=bus, tuning={"b": Tuning(max_retries=1)})
    await manager.execute("scripted", timeout=WAIT)
    failed = [e for e in bus.published if isinstance(e, SagaStepFailed)]
    assert [(e.attempt, e.will_retry) for e in failed] == [(1, True), (2, False)]
    await manager.close()


async def test_events_carry_saga_identity_and_correlation_id() -> None:
    """Every event names the saga, its definition and its correlation id; times are UTC."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["c"] = returning(SagaStepResult.fail("declined"))
    manager = manager_for(script, config=FAST, event_bus=bus)
    saga_id = await manager.start("scripted", correlation_id="trace-7")
    await manager.wait(saga_id, timeout=WAIT)
    events = saga_events(bus)
    assert len(events) == 11  # 8 lifecycle events and 3 SagaStepStarted
    assert {(e.saga_id, e.saga_name, e.correlation_id, e.worker_id) for e in events} == {
        (saga_id, "scripted", "trace-7", manager.worker_id)
    }
    assert all(e.occurred_at.utcoffset() == timedelta(0) for e in events)
    await manager.close()


async def test_correlation_id_defaults_to_saga_id_in_events() -> None:
    """Without a correlation id, events carry the saga id as correlation id."""
    bus = InMemoryEventBus(record=True)
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    assert {e.correlation_id for e in saga_events(bus)} == {"s-1"}
    await manager.close()


async def test_failure_events_carry_the_error() -> None:
    """Step failure, compensating and compensated events say why."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["b"] = returning(SagaStepResult.fail("card declined"))
    manager = manager_for(script, config=FAST, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    [failed] = [e for e in bus.published if isinstance(e, SagaStepFailed)]
    [compensating] = [e for e in bus.published if isinstance(e, SagaCompensating)]
    [compensated] = [e for e in bus.published if isinstance(e, SagaCompensated)]
    assert failed.error == "card declined"
    assert failed.will_retry is False
    assert "card declined" in compensating.error
    assert "card declined" in compensated.error
    await manager.close()


async def test_saga_started_is_not_repeated_on_resume() -> None:
    """A saga resumed after a crash does not announce ``SagaStarted`` again."""
    store = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first()
    first_bus, second_bus = InMemoryEventBus(record=True), InMemoryEventBus(record=True)
    first = manager_for(script, store=store, config=FAST, event_bus=first_bus, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=store, config=FAST, event_bus=second_bus, worker_id="w")
    await second.recover()
    await second.wait(saga_id, timeout=WAIT)
    assert trace(first_bus) == [("SagaStarted", None), ("SagaStepCompleted", "a")]
    assert trace(second_bus) == [
        ("SagaResumed", None),
        ("SagaStepCompleted", "b"),
        ("SagaStepCompleted", "c"),
        ("SagaCompleted", None),
    ]
    await first.close()
    await second.close()


async def test_raising_bus_never_breaks_a_saga() -> None:
    """A bus whose ``publish`` raises does not change the saga's outcome."""
    bus = RaisingBus()
    script = Script()
    manager = manager_for(script, config=FAST, event_bus=bus)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert script.actions() == ["a", "b", "c"]
    assert bus.attempts == 8  # 5 lifecycle events and 3 SagaStepStarted, each raising
    await manager.close()


async def test_raising_bus_never_breaks_compensation() -> None:
    """A failing bus does not stop compensation either."""
    bus = RaisingBus()
    script = Script()
    script.behaviours["c"] = returning(SagaStepResult.fail("no"))
    manager = manager_for(script, config=FAST, event_bus=bus)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert script.undone() == ["b", "a"]
    await manager.close()


async def test_failing_handler_never_breaks_a_saga() -> None:
    """A subscriber that raises on every event does not affect the saga."""
    bus = InMemoryEventBus()

    async def broken(event: SagaEvent) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(SagaEvent, broken)
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    await manager.close()


async def test_subscribers_receive_events_by_type() -> None:
    """Subscribing to one event type on the bus receives just those events."""
    bus = InMemoryEventBus()
    completed: list[str | None] = []

    async def on_step(event: SagaStepCompleted) -> None:
        completed.append(event.step_name)

    bus.subscribe(SagaStepCompleted, on_step)
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    assert completed == ["a", "b", "c"]
    await manager.close()


async def test_terminal_event_is_published_after_the_state_is_durable() -> None:
    """When ``SagaCompleted`` arrives, the store already holds the terminal record."""
    bus = InMemoryEventBus()
    store = InMemorySagaStore()
    seen: list[SagaStatus | None] = []

    async def on_done(event: SagaCompleted) -> None:
        record = await store.load(event.saga_id)
        seen.append(None if record is None else record.status)

    bus.subscribe(SagaCompleted, on_done)
    manager = manager_for(Script(), store=store, config=FAST, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    assert seen == [SagaStatus.COMPLETED]
    await manager.close()


# --------------------------------------------------------------------------- events follow writes


async def test_every_event_announces_a_state_already_stored() -> None:
    """When an event is delivered, the store already holds what it announces (defect 8)."""
    store = InMemorySagaStore()
    bus = InMemoryEventBus()
    script = Script()
    script.behaviours["b"] = raise_each(ConnectionError("flaky"))
    script.behaviours["c"] = returning(SagaStepResult.fail("declined"))
    seen: list[tuple[str, Any]] = []

    async def check(event: SagaEvent) -> None:
        stored = await store.load(event.saga_id)
        assert stored is not None
        step = stored.steps.get(event.step_name or "")
        if isinstance(event, SagaStarted):  # the saga is stored and held by the worker
            seen.append(("started", (stored.status, stored.lease_owner == "w")))
        elif isinstance(event, SagaStepFailed):
            assert step is not None
            seen.append(("failed", (event.will_retry, step.attempts, step.status)))
        elif isinstance(event, SagaCompensating):
            seen.append(("compensating", stored.status))

    bus.subscribe(SagaEvent, check)
    manager = manager_for(script, store=store, config=FAST, event_bus=bus, worker_id="w")
    await manager.execute("scripted", timeout=WAIT)
    await manager.close()
    assert seen == [
        ("started", (SagaStatus.PENDING, True)),
        ("failed", (True, 1, SagaStepStatus.RUNNING)),
        ("failed", (False, 1, SagaStepStatus.FAILED)),
        ("compensating", SagaStatus.COMPENSATING),
    ]


async def test_failed_first_step_passes_through_compensating() -> None:
    """A failed first step: ``COMPENSATING`` is stored and announced, then ``COMPENSATED``."""
    store = InMemorySagaStore()
    saved: list[SagaStatus] = []
    original = store.save

    async def recording(record: SagaRecord) -> None:
        await original(record)
        saved.append(record.status)

    store.save = recording  # type: ignore[method-assign]
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["a"] = returning(SagaStepResult.fail("declined"))
    manager = manager_for(script, store=store, config=FAST, event_bus=bus)
    record = await manager.execute("scripted", timeout=WAIT)
    await manager.close()
    assert record.status is SagaStatus.COMPENSATED
    assert saved == [SagaStatus.PENDING, SagaStatus.COMPENSATING, SagaStatus.COMPENSATED]
    assert trace(bus) == [
        ("SagaStarted", None),
        ("SagaStepFailed", "a"),
        ("SagaCompensating", None),
        ("SagaCompensated", None),
    ]


# --------------------------------------------------------------------------- service events


async def test_each_attempt_is_announced_before_it_runs() -> None:
    """``SagaStepStarted`` precedes every attempt, numbered, after ``SagaStarted``."""
    bus = InMemoryEventBus(record=True)
    script = Script()
    script.behaviours["b"] = raise_each(ConnectionError("flaky"))
    manager = manager_for(script, config=FAST, event_bus=bus)
    await manager.execute("scripted", timeout=WAIT)
    started = [
        (e.event_type, e.step_name, getattr(e, "attempt", None))
        for e in saga_events(bus)
        if isinstance(e, SagaStarted | SagaStepStarted)
    ]
    assert started == [
        ("SagaStarted", None, None),
        ("SagaStepStarted", "a", 1),
        ("SagaStepStarted", "b", 1),
        ("SagaStepStarted", "b", 2),
        ("SagaStepStarted", "c", 1),
    ]
    await manager.close()


async def test_completion_events_carry_durations() -> None:
    """Step and saga completion events say how long they took (from the stored times)."""
    bus = InMemoryEventBus(record=True)
    manager = manager_for(Script(), config=FAST, event_bus=bus)
    record = await manager.execute("scripted", timeout=WAIT)
    [done] = [e for e in saga_events(bus) if isinstance(e, SagaCompleted)]
    assert record.created_at is not None
    assert record.completed_at is not None
    assert done.duration_seconds == (record.completed_at - record.created_at).total_seconds()
    steps = [e for e in saga_events(bus) if isinstance(e, SagaStepCompleted)]
    for event in steps:
        step = record.steps[event.step_name or ""]
        assert step.started_at is not None
        assert step.completed_at is not None
        assert event.duration_seconds == (step.completed_at - step.started_at).total_seconds()
    await manager.close()


async def test_a_takeover_is_announced_with_the_previous_owner() -> None:
    """``SagaResumed`` names the worker that held the saga before."""
    clock = ManualClock()
    store = InMemorySagaStore(clock=clock)
    script = Script()
    script.behaviours["b"] = crash_first()
    first = manager_for(script, store=store, config=FAST, worker_id="old", clock=clock)
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    clock.advance(FAST.lease_seconds + 1)  # the dead worker's lease runs out
    bus = InMemoryEventBus(record=True)
    second = manager_for(
        script, store=store, config=FAST, event_bus=bus, worker_id="new", clock=clock
    )
    await second.resume(saga_id)
    await second.wait(saga_id, timeout=WAIT)
    [resumed] = [e for e in saga_events(bus) if isinstance(e, SagaResumed)]
    assert (resumed.previous_owner, resumed.worker_id) == ("old", "new")
    assert not [e for e in saga_events(bus) if isinstance(e, SagaStarted)]
    await first.close()
    await second.close()


async def test_a_cancel_request_is_announced_by_the_requesting_process() -> None:
    """A client's ``cancel()`` of a saga it does not run publishes ``SagaCancelRequested``."""
    store = InMemorySagaStore()
    bus = InMemoryEventBus(record=True)
    client = manager_for(Script(), store=store, config=FAST, event_bus=bus, worker_id="api")
    saga_id = await client.enqueue("scripted")
    await client.cancel(saga_id, reason="customer asked")
    await client.cancel(saga_id, reason="asked twice")
    requests = [e for e in saga_events(bus) if isinstance(e, SagaCancelRequested)]
    assert [(e.reason, e.worker_id) for e in requests] == [
        ("customer asked", "api"),
        ("customer asked", "api"),  # the stored (first) request, announced again
    ]
    await client.close()
