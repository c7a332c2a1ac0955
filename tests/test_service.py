"""Sagas as a service on the in-memory store: enqueue, serve, cancel from a client, retry.

The same calls on SQLite and PostgreSQL, across processes, are in
``tests/scenarios/test_service_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from lexigram.events.sagas import (
    InMemorySagaStore,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaDataError,
    SagaError,
    SagaManager,
    SagaNotFoundError,
    SagaStatus,
    SagaStepStatus,
    saga_step,
)
from lexigram.events.sagas.testing import ManualClock, StoreCall, StoreWrapper
from tests.support.helpers import (
    Fault,
    FaultStore,
    Script,
    Tuning,
    blocking,
    manager_for,
    raise_each,
    saga_class,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0, shutdown_timeout=1)
T = TypeVar("T")


@contextlib.asynccontextmanager
async def serving(manager: SagaManager, **options: object) -> AsyncIterator[asyncio.Event]:
    """Run ``manager.serve(**options)`` in the background; stop it on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(manager.serve(stop=stop, **options))  # type: ignore[arg-type]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


# ------------------------------------------------------------------ enqueue


async def test_enqueue_stores_a_pending_saga_nobody_holds_and_runs_nothing() -> None:
    """A client's enqueue writes a ``PENDING`` record without a lease and runs no step."""
    script = Script()
    client = manager_for(script, config=FAST)
    saga_id = await client.enqueue("scripted", {"order": 1}, correlation_id="c-1")
    await asyncio.sleep(0.05)
    record = await stored(client.store, saga_id)
    assert (record.status, record.lease_owner, record.current_step) == (
        SagaStatus.PENDING,
        None,
        "a",
    )
    assert record.data == {"order": 1}
    assert record.correlation_id == "c-1"
    assert record.deadline_at is None  # counts from the first run, not from the enqueue
    assert script.calls == []
    assert client.running() == ()
    await client.close()


async def test_enqueue_is_idempotent_per_saga_id() -> None:
    """Enqueueing an existing id stores nothing new and returns the id."""
    client = manager_for(Script(), config=FAST)
    first = await client.enqueue("scripted", {"n": 1}, saga_id="order-7")
    again = await client.enqueue("scripted", {"n": 2}, saga_id="order-7")
    assert first == again == "order-7"
    record = await stored(client.store, "order-7")
    assert (record.data, record.version) == ({"n": 1}, 1)
    await client.close()


async def test_enqueue_refuses_bad_input_naming_it() -> None:
    """Unknown names, bad data, naive times and connections a store cannot use are refused."""
    client = manager_for(Script(), config=FAST)
    with pytest.raises(SagaNotFoundError):
        await client.enqueue("nope")
    with pytest.raises(SagaDataError):
        await client.enqueue("scripted", {"bad": {1, 2}})
    with pytest.raises(TypeError, match="not_before must be a timezone-aware datetime"):
        await client.enqueue("scripted", not_before=datetime(2030, 1, 1))  # noqa: DTZ001
    with pytest.raises(TypeError, match="cannot enqueue through a connection"):
        await client.enqueue("scripted", connection=object())
    assert await client.list() == []
    await client.close()


# ------------------------------------------------------------------ serve


async def test_a_worker_runs_what_a_client_enqueued() -> None:
    """``serve()`` claims enqueued sagas and runs them to completion."""
    store = InMemorySagaStore()
    script = Script()
    client = manager_for(Script(), store=store, config=FAST)
    worker = manager_for(script, store=store, config=FAST, worker_id="worker-1")
    async with serving(worker, poll_interval=30):
        ids = [await client.enqueue("scripted", {"n": n}) for n in range(5)]
        records = [await client.wait(saga_id, timeout=5) for saga_id in ids]
    assert {r.status for r in records} == {SagaStatus.COMPLETED}
    assert script.actions().count("a") == 5
    assert all(r.deadline_at is not None for r in records)
    assert (await stored(store, ids[0])).lease_owner is None
    await client.close()
    await worker.close()


async def test_serve_wakes_on_an_enqueue_without_waiting_for_its_poll() -> None:
    """With a 60 s poll, an enqueued saga still starts at once (the store signals it)."""
    store = InMemorySagaStore()
    worker = manager_for(Script(), store=store, config=FAST)
    client = manager_for(Script(), store=store, config=FAST)
    async with serving(worker, poll_interval=60):
        await asyncio.sleep(0.05)  # the worker is idle, waiting
        saga_id = await client.enqueue("scripted")
        record = await client.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPLETED
    await client.close()
    await worker.close()


async def test_serve_never_runs_more_than_its_concurrency() -> None:
    """With every step blocked, a worker holds exactly ``concurrency`` sagas."""
    store = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["a"] = blocking(entered, release)
    worker = manager_for(script, store=store, config=FAST)
    client = manager_for(Script(), store=store, config=FAST)
    ids = [await client.enqueue("scripted") for _ in range(7)]
    async with serving(worker, concurrency=3, poll_interval=0.01):
        await entered.wait()
        await asyncio.sleep(0.1)
        assert len(worker.running()) == 3
        waiting = [r for r in await client.list() if r.lease_owner is None]
        assert len(waiting) == 4
        release.set()
        records = [await client.wait(saga_id, timeout=5) for saga_id in ids]
    assert {r.status for r in records} == {SagaStatus.COMPLETED}
    await client.close()
    await worker.close()


async def test_max_concurrency_caps_one_saga_type() -> None:
    """``register(..., max_concurrency=1)`` runs one saga of that type at a time."""
    store = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["a"] = blocking(entered, release)
    worker = SagaManager(store=store, config=FAST)
    worker.register(saga_class(script), max_concurrency=1)
    client = manager_for(Script(), store=store, config=FAST)
    ids = [await client.enqueue("scripted") for _ in range(3)]
    async with serving(worker, concurrency=10, poll_interval=0.01):
        await entered.wait()
        await asyncio.sleep(0.1)
        assert len(worker.running()) == 1
        release.set()
        for saga_id in ids:
            assert (await client.wait(saga_id, timeout=5)).status is SagaStatus.COMPLETED
    await client.close()
    await worker.close()


async def test_serve_refuses_bad_settings() -> None:
    """``concurrency`` and ``poll_interval`` must be positive."""
    worker = manager_for(Script(), config=FAST)
    with pytest.raises(ValueError, match="concurrency must be a positive int"):
        await worker.serve(concurrency=0)
    with pytest.raises(ValueError, match="poll_interval must be a positive number"):
        await worker.serve(poll_interval=0)
    with pytest.raises(ValueError, match="max_concurrency must be a positive int"):
        worker.register(saga_class(Script(), name="other"), max_concurrency=0)
    assert worker.registered == ("scripted",)
    await worker.close()


async def test_a_saga_enqueued_for_later_waits_until_it_is_due() -> None:
    """``not_before`` keeps a saga from every worker until that time."""
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    store = InMemorySagaStore(clock=clock)
    script = Script()
    worker = manager_for(script, store=store, config=FAST, clock=clock)
    client = manager_for(Script(), store=store, config=FAST, clock=clock)
    saga_id = await client.enqueue("scripted", not_before=clock.now + timedelta(hours=1))
    async with serving(worker, poll_interval=0.01):
        await asyncio.sleep(0.1)
        assert script.calls == []
        clock.advance(3600)
        record = await client.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPLETED
    await client.close()
    await worker.close()


async def test_a_saga_whose_definition_changed_is_left_to_others() -> None:
    """A claimed saga this worker cannot resume is released and passed over, not retried hot."""
    store = InMemorySagaStore()
    worker = manager_for(Script(), store=store, config=FAST)
    client = manager_for(Script(), store=store, config=FAST)
    saga_id = await client.enqueue("scripted")
    record = await stored(store, saga_id)
    record.status = SagaStatus.RUNNING
    record.current_step = "gone"  # a step the registered definition does not have
    await store.save(record)
    writes = store.writes
    async with serving(worker, poll_interval=0.01):
        await asyncio.sleep(0.3)
    left = await stored(store, saga_id)
    assert (left.status, left.lease_owner) == (SagaStatus.RUNNING, None)
    assert [p.saga_id for p in worker.recovery_problems] == [saga_id]
    assert store.writes - writes == 2  # one claim and one release, not one per poll
    await client.close()
    await worker.close()


# ------------------------------------------------------------------ cancel from anywhere


async def test_a_client_cancels_a_saga_another_worker_is_running() -> None:
    """The request is stored; the holder stops the step at once and compensates."""
    store = InMemorySagaStore()
    script = Script()
    entered = asyncio.Event()
    script.behaviours["b"] = blocking(entered)
    worker = manager_for(script, store=store, config=FAST)
    client = manager_for(Script(), store=store, config=FAST)
    async with serving(worker, poll_interval=30):
        saga_id = await client.enqueue("scripted")
        await asyncio.wait_for(entered.wait(), timeout=5)
        asked = await client.cancel(saga_id, reason="customer changed their mind")
        assert asked.status is SagaStatus.RUNNING  # returned once the request is durable
        assert asked.cancel_reason == "customer changed their mind"
        record = await client.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert record.failure.kind == "cancelled"
    assert script.undone() == ["a"]
    await client.close()
    await worker.close()


async def test_cancel_of_a_finished_saga_is_a_no_op() -> None:
    """Cancelling a terminal saga returns it unchanged and stores no request."""
    client = manager_for(Script(), config=FAST)
    done = await client.execute("scripted")
    again = await client.cancel(done.saga_id)
    assert again.status is SagaStatus.COMPLETED
    assert (again.cancel_requested_at, again.version) == (None, done.version)
    with pytest.raises(TypeError, match="reason must be a str"):
        await client.cancel(done.saga_id, reason=5)  # type: ignore[arg-type]
    await client.close()


# ------------------------------------------------------------------ retry (redrive)


async def test_retry_redrives_a_failed_saga_to_compensated() -> None:
    """After the cause is fixed, ``retry()`` compensates what was left; redrives counts it."""
    store = InMemorySagaStore()
    script = Script()
    script.behaviours["c"] = raise_each(*[ValueError("declined")] * 5)
    script.undo_behaviours["b"] = raise_each(OSError("refund service down"))
    tuning = {"b": Tuning(undo_max_retries=0), "c": Tuning(max_retries=0)}
    worker = manager_for(script, store=store, config=FAST, tuning=tuning)
    failed = await worker.execute("scripted")
    assert failed.status is SagaStatus.FAILED
    assert failed.failure is not None
    assert failed.failure.kind == "compensation_failed"
    assert failed.steps["b"].status is SagaStepStatus.FAILED
    client = manager_for(Script(), store=store, config=FAST)
    with pytest.raises(SagaError, match="only a failed saga can be retried"):
        await client.retry((await client.execute("scripted")).saga_id)
    redriven = await client.retry(failed.saga_id)
    assert (redriven.status, redriven.redrives, redriven.lease_owner) == (
        SagaStatus.COMPENSATING,
        1,
        None,
    )
    async with serving(worker, poll_interval=30):
        record = await client.wait(failed.saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["b"].status is SagaStepStatus.COMPENSATED
    assert record.failure is not None
    assert record.failure.kind == "step_error"  # the cause, back from under the give-up
    assert script.undone().count("b") == 2
    assert script.undone().count("a") == 1  # compensated before: not undone again
    with pytest.raises(SagaNotFoundError):
        await client.retry("ghost")
    await client.close()
    await worker.close()


# ------------------------------------------------------------------ per-type configuration


async def test_a_saga_type_runs_with_its_own_config() -> None:
    """``register(..., config=)`` sets one type's deadline and retries, not the others'."""
    script = Script()
    script.behaviours["a"] = raise_each(ConnectionError("flaky"), ConnectionError("flaky"))
    manager = SagaManager(config=SagaConfig(retry_delay_seconds=0, max_retries_per_step=0))
    own = SagaConfig(retry_delay_seconds=0, max_retries_per_step=3, default_timeout_seconds=7)
    manager.register(saga_class(script, name="patient"), config=own)
    manager.register(saga_class(Script(), name="plain"))
    record = await manager.execute("patient", timeout=5)
    assert record.status is SagaStatus.COMPLETED  # two retries allowed by its own config
    assert record.created_at is not None
    assert record.deadline_at == record.created_at + timedelta(seconds=7)
    plain = await manager.execute("plain", timeout=5)
    assert plain.created_at is not None
    assert plain.deadline_at == plain.created_at + timedelta(
        seconds=SagaConfig().default_timeout_seconds
    )
    with pytest.raises(TypeError, match="config must be a SagaConfig"):
        manager.register(saga_class(Script(), name="bad"), config={"x": 1})  # type: ignore[arg-type]
    await manager.close()


async def test_an_enqueued_saga_gets_its_types_deadline_when_it_first_runs() -> None:
    """The deadline of an enqueued saga counts from its first run, by its type's config."""
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    store = InMemorySagaStore(clock=clock)
    own = SagaConfig(retry_delay_seconds=0, default_timeout_seconds=60)
    client = SagaManager(store=store, clock=clock)
    client.register(saga_class(Script()), config=own)
    worker = SagaManager(store=store, clock=clock)
    worker.register(saga_class(Script()), config=own)
    saga_id = await client.enqueue("scripted")
    clock.advance(3600)  # an hour in the queue does not eat into its minute
    async with serving(worker, poll_interval=0.01):
        record = await client.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPLETED
    assert record.deadline_at == clock.now + timedelta(seconds=60)
    await client.close()
    await worker.close()


# ------------------------------------------------------------------ a worker under attack


async def test_a_claim_whose_reply_was_lost_strands_nothing() -> None:
    """A claim that landed but raised is adopted at once, not after its lease expires."""
    inner = InMemorySagaStore()
    store = FaultStore(inner, Fault(ambiguous={2}))  # write 1: the enqueue; 2: the claim
    client = manager_for(Script(), store=store, config=FAST)
    worker = manager_for(Script(), store=store, config=FAST)
    saga_id = await client.enqueue("scripted")
    async with serving(worker, poll_interval=0.05):
        record = await client.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPLETED
    await client.close()
    await worker.close()


async def test_the_worker_loop_survives_a_store_that_raises_anything() -> None:
    """An unexpected error from a claim is logged; the loop claims again and goes on."""

    class Flaky(StoreWrapper):
        failures = 3

        async def forward(self, call: StoreCall[T]) -> T:
            if call.method == "claim" and self.failures:
                self.failures -= 1
                raise RuntimeError("driver bug")
            return await super().forward(call)

    inner = InMemorySagaStore()
    client = manager_for(Script(), store=inner, config=FAST)
    worker = manager_for(Script(), store=Flaky(inner), config=FAST)
    saga_id = await client.enqueue("scripted")
    async with serving(worker, poll_interval=0.01):
        record = await client.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPLETED
    await client.close()
    await worker.close()


async def test_one_manager_serves_once() -> None:
    """A second ``serve()`` on the same manager is refused while the first runs."""
    worker = manager_for(Script(), config=FAST)
    async with serving(worker, poll_interval=0.05):
        await asyncio.sleep(0.01)
        with pytest.raises(SagaError, match="already running"):
            await worker.serve()
    await worker.close()


async def test_a_cancel_reason_must_be_reasonable() -> None:
    """An over-long reason is refused before anything is stored."""
    client = manager_for(Script(), config=FAST)
    saga_id = await client.enqueue("scripted")
    with pytest.raises(ValueError, match="reason must be at most 2000 characters"):
        await client.cancel(saga_id, reason="x" * 2001)
    with pytest.raises(ValueError, match="reason must not contain NUL characters"):
        await client.cancel(saga_id, reason="a\x00b")
    assert (await stored(client.store, saga_id)).cancel_requested_at is None
    await client.close()


# ------------------------------------------------------------------ found in review


async def test_close_during_a_claim_strands_nothing() -> None:
    """A claim that lands while the manager closes is handed back, not left under its lease."""
    claiming, go_on = asyncio.Event(), asyncio.Event()

    class SlowClaims(StoreWrapper):
        async def forward(self, call: StoreCall[T]) -> T:
            if call.method == "claim":
                claiming.set()
                await go_on.wait()
            return await super().forward(call)

    inner = InMemorySagaStore()
    client = manager_for(Script(), store=inner, config=FAST)
    saga_id = await client.enqueue("scripted")
    worker = manager_for(Script(), store=SlowClaims(inner), config=FAST)
    serving_task = asyncio.create_task(worker.serve(poll_interval=30))
    await asyncio.wait_for(claiming.wait(), timeout=5)
    closing = asyncio.create_task(worker.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # close() waits for the claim in flight
    go_on.set()
    await asyncio.wait_for(closing, timeout=5)
    await asyncio.wait_for(serving_task, timeout=5)  # returns, raises nothing
    left = await stored(inner, saga_id)
    assert (left.status, left.lease_owner) == (SagaStatus.PENDING, None)
    await client.close()


async def test_a_capped_type_is_not_starved_by_an_uncapped_backlog() -> None:
    """Capped names are claimed first, within their caps."""
    store = InMemorySagaStore()
    started: list[str] = []
    worker = SagaManager(store=store, config=FAST)
    client = SagaManager(store=store, config=FAST)
    for name, cap in (("bulk", None), ("rare", 1)):
        script = Script()

        async def note(ctx: SagaContext, name: str = name) -> object:
            started.append(name)
            await asyncio.sleep(0.01)
            return None

        script.behaviours["a"] = note
        worker.register(saga_class(script, name=name), max_concurrency=cap)
        client.register(saga_class(Script(), name=name))
    ids = [await client.enqueue("bulk") for _ in range(20)]
    ids.append(await client.enqueue("rare"))
    async with serving(worker, concurrency=2, poll_interval=30):
        for saga_id in ids:
            await client.wait(saga_id, timeout=10)
    assert "rare" in started[:2]
    await client.close()
    await worker.close()


async def test_an_enqueued_saga_recovered_without_serve_gets_its_deadline() -> None:
    """Whatever path first runs an enqueued saga (here recover()) gives it its deadline."""
    store = InMemorySagaStore()
    client = manager_for(Script(), store=store, config=FAST)
    saga_id = await client.enqueue("scripted")
    worker = manager_for(Script(), store=store, config=FAST)
    assert await worker.recover() == 1
    record = await worker.wait(saga_id, timeout=5)
    assert record.deadline_at is not None
    assert record.created_at is not None
    assert record.deadline_at > record.created_at
    await client.close()
    await worker.close()


async def test_a_saga_cancelled_before_it_ran_compensates_nothing() -> None:
    """compensate_failed never compensates a step whose action no worker started."""
    store = InMemorySagaStore()
    script = Script()
    worker = SagaManager(store=store, config=FAST)
    worker.register(_flagged(script))
    client = SagaManager(store=store, config=FAST)
    client.register(_flagged(Script()))
    saga_id = await client.enqueue("flagged")
    await client.cancel(saga_id, reason="changed my mind")
    async with serving(worker, poll_interval=30):
        record = await client.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert script.calls == []  # neither the action nor its compensation ran
    await client.close()
    await worker.close()


def _flagged(script: Script) -> type[SagaBase]:
    class Flagged(SagaBase):
        name = "flagged"

        @saga_step("a", compensate_failed=True)
        async def a(self, ctx: SagaContext) -> object:
            return await script.act("a", ctx)

        @saga_step("a", compensation=True)
        async def undo_a(self, ctx: SagaContext) -> object:
            return await script.undo("a", ctx)

    return Flagged


async def test_retry_refuses_a_saga_that_failed_without_compensating() -> None:
    """A saga that ended FAILED with compensation disabled has nothing to redrive."""
    script = Script()
    script.behaviours["b"] = raise_each(ValueError("no"))
    manager = manager_for(
        script, config=SagaConfig(retry_delay_seconds=0, enable_compensation=False)
    )
    failed = await manager.execute("scripted", timeout=5)
    assert failed.status is SagaStatus.FAILED
    with pytest.raises(SagaError, match="nothing to redrive"):
        await manager.retry(failed.saga_id)
    assert (await stored(manager.store, failed.saga_id)).status is SagaStatus.FAILED
    await manager.close()


async def test_serve_needs_something_to_serve() -> None:
    """A manager with nothing registered, or a bool poll interval, is refused at once."""
    with pytest.raises(SagaError, match="needs at least one registered saga"):
        await SagaManager().serve()
    worker = manager_for(Script(), config=FAST)
    with pytest.raises(ValueError, match="poll_interval must be a positive number"):
        await worker.serve(poll_interval=True)
    await worker.close()


async def test_stopping_serve_lets_the_running_step_finish_then_releases() -> None:
    """On stop, the step in flight completes and is stored; the saga goes no further here."""
    store = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    worker = manager_for(script, store=store, config=SagaConfig(shutdown_timeout=10))
    client = manager_for(Script(), store=store, config=FAST)
    saga_id = await client.enqueue("scripted")
    stop = asyncio.Event()
    serving_task = asyncio.create_task(worker.serve(stop=stop, poll_interval=30))
    await asyncio.wait_for(entered.wait(), timeout=5)
    stop.set()
    await asyncio.sleep(0.05)
    assert not serving_task.done()  # waiting for step b, not interrupting it
    release.set()
    await asyncio.wait_for(serving_task, timeout=5)
    left = await stored(store, saga_id)
    assert left.steps["b"].status is SagaStepStatus.COMPLETED
    assert (left.status, left.current_step, left.lease_owner) == (SagaStatus.RUNNING, "c", None)
    assert script.actions() == ["a", "b"]  # c is left to the next worker
    await client.close()
    await worker.close()
