"""The common API of ``SagaManager`` (SPEC sections 6, 7 and 10)."""

from __future__ import annotations

import asyncio
import math

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.errors import (
    SagaDataError,
    SagaDefinitionError,
    SagaError,
    SagaLeaseError,
    SagaNotFoundError,
    SagaStoreUnavailableError,
    SagaTimeoutError,
)
from lexigram.events.sagas.manager import SagaManager, SagaManagerProtocol
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Fault,
    FaultStore,
    Script,
    StuckStep,
    Tuning,
    blocking,
    manager_for,
    progress,
    raise_each,
    returning,
    saga_class,
    seed_record,
    settle,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


# --------------------------------------------------------------------------- construction


def test_manager_protocol_alias() -> None:
    """``SagaManagerProtocol`` is the upstream name of ``SagaManager``."""
    assert SagaManagerProtocol is SagaManager


def test_default_store_is_in_memory() -> None:
    """Without a store the manager uses a fresh ``InMemorySagaStore``."""
    first, second = SagaManager(), SagaManager()
    assert isinstance(first.store, InMemorySagaStore)
    assert first.store is not second.store


def test_config_must_be_a_saga_config() -> None:
    """A config of another type is refused."""
    with pytest.raises(TypeError, match="SagaConfig"):
        SagaManager(config={"max_retries_per_step": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("worker_id", ["", "  "])
def test_worker_id_must_not_be_empty(worker_id: str) -> None:
    """An empty worker id is refused."""
    with pytest.raises(ValueError, match="worker_id"):
        SagaManager(worker_id=worker_id)


# --------------------------------------------------------------------------- start


async def test_start_returns_the_id_and_stores_the_saga() -> None:
    """``start`` returns a UUID id and the record is in the store when it returns."""
    manager = manager_for(Script(), config=FAST)
    saga_id = await manager.start("scripted", {"order_id": "o-1"})
    record = await stored(manager.store, saga_id)
    assert record.saga_name == "scripted"
    assert record.data["order_id"] == "o-1"
    await manager.wait(saga_id, timeout=WAIT)
    await manager.close()


async def test_start_uses_the_given_saga_id() -> None:
    """An explicit ``saga_id`` is used as is."""
    manager = manager_for(Script(), config=FAST)
    assert await manager.start("scripted", saga_id="order-42") == "order-42"
    assert (await manager.wait("order-42", timeout=WAIT)).saga_id == "order-42"
    await manager.close()


async def test_start_does_not_keep_a_reference_to_the_callers_data() -> None:
    """Changing the dict after ``start`` does not change the saga's data."""
    manager = manager_for(Script(), config=FAST)
    data = {"order_id": "o-1"}
    saga_id = await manager.start("scripted", data)
    data["order_id"] = "changed"
    assert (await manager.wait(saga_id, timeout=WAIT)).data["order_id"] == "o-1"
    await manager.close()


async def test_duplicate_start_runs_once() -> None:
    """Starting an existing saga id again returns the id and starts nothing."""
    script = Script()
    manager = manager_for(script, config=FAST)
    assert await manager.start("scripted", saga_id="s-1") == "s-1"
    await manager.wait("s-1", timeout=WAIT)
    assert await manager.start("scripted", {"other": 1}, saga_id="s-1") == "s-1"
    await settle(manager)
    assert script.actions() == ["a", "b", "c"]
    assert "other" not in (await stored(manager.store, "s-1")).data
    await manager.close()


async def test_concurrent_duplicate_starts_run_once() -> None:
    """Concurrent starts with one saga id run the saga once."""
    script = Script()
    manager = manager_for(script, config=FAST)
    ids = await asyncio.gather(*(manager.start("scripted", saga_id="s-1") for _ in range(5)))
    assert ids == ["s-1"] * 5
    await manager.wait("s-1", timeout=WAIT)
    await settle(manager)
    assert script.actions() == ["a", "b", "c"]
    await manager.close()


async def test_duplicate_start_from_two_workers_runs_once() -> None:
    """Two workers starting one saga id at once run it once."""
    store = InMemorySagaStore()
    script = Script()
    first = manager_for(script, store=store, config=FAST, worker_id="A")
    second = manager_for(script, store=store, config=FAST, worker_id="B")
    await asyncio.gather(
        first.start("scripted", saga_id="s-1"), second.start("scripted", saga_id="s-1")
    )
    await first.wait("s-1", timeout=WAIT)
    await settle(first)
    await settle(second)
    assert script.actions() == ["a", "b", "c"]
    await first.close()
    await second.close()


async def test_unknown_name_raises_saga_not_found() -> None:
    """An unregistered name raises ``SagaNotFoundError`` with the documented message."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaNotFoundError) as info:
        await manager.start("nope", {"k": 1})
    assert str(info.value) == "No saga registered with name 'nope'"
    assert isinstance(info.value, KeyError)
    assert await manager.store.list() == []
    await manager.close()


@pytest.mark.parametrize("data", [[1, 2], "order", 42, (("k", 1),)])
async def test_non_dict_data_is_rejected_before_storing(data: object) -> None:
    """Data that is not a dict is refused, naming its type; nothing is stored."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaDataError, match=type(data).__name__):
        await manager.start("scripted", data)  # type: ignore[arg-type]
    assert await manager.store.list() == []
    await manager.close()


@pytest.mark.parametrize("value", [object(), {1, 2}, b"raw", math.nan, math.inf])
async def test_unserialisable_data_is_rejected_before_storing(value: object) -> None:
    """Data with a non-JSON value is refused, naming the key; nothing is stored or run."""
    script = Script()
    manager = manager_for(script, config=FAST)
    with pytest.raises(SagaDataError, match="'payload'"):
        await manager.start("scripted", {"ok": 1, "payload": value})
    assert await manager.store.list() == []
    assert script.calls == []
    await manager.close()


async def test_non_str_keys_are_rejected_before_storing() -> None:
    """A non-string key is refused; nothing is stored."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaDataError):
        await manager.start("scripted", {1: "one"})  # type: ignore[dict-item]
    assert await manager.store.list() == []
    await manager.close()


@pytest.mark.parametrize(
    ("saga_id", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (" padded", "spaces"),
        ("x" * 201, "limit"),
        ("a\nb", "control"),
        ("a\x00b", "control"),
        (42, "str"),
    ],
)
async def test_invalid_saga_ids_are_rejected(saga_id: object, problem: str) -> None:
    """Empty, padded, over-long, control-character and non-str ids are refused; nothing stored."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaDataError, match=problem):
        await manager.start("scripted", saga_id=saga_id)  # type: ignore[arg-type]
    assert await manager.store.list() == []
    await manager.close()


async def test_longest_valid_saga_id_is_accepted() -> None:
    """An id of 200 characters is fine."""
    manager = manager_for(Script(), config=FAST)
    saga_id = "x" * 200
    assert (await manager.execute("scripted", saga_id=saga_id, timeout=WAIT)).saga_id == saga_id
    await manager.close()


async def test_non_str_correlation_id_is_rejected() -> None:
    """A correlation id must be a string; nothing is stored."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaDataError, match="correlation_id"):
        await manager.start("scripted", correlation_id=7)  # type: ignore[arg-type]
    assert await manager.store.list() == []
    await manager.close()


async def test_store_unavailable_at_start_fails_fast_storing_nothing() -> None:
    """When the store is down, ``start`` raises and nothing is half-written or run."""
    inner = InMemorySagaStore()
    script = Script()
    manager = manager_for(script, store=FaultStore(inner, Fault(unavailable={1})), config=FAST)
    with pytest.raises(SagaStoreUnavailableError):
        await manager.start("scripted", saga_id="s-1")
    assert await inner.list() == []
    assert manager.running() == ()
    assert script.calls == []
    await manager.close()


# --------------------------------------------------------------------------- wait / execute / get


async def test_execute_returns_the_terminal_record() -> None:
    """``execute`` is ``start`` + ``wait``."""
    manager = manager_for(Script(), config=FAST)
    record = await manager.execute("scripted", {"order_id": "o-1"}, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.data["order_id"] == "o-1"
    await manager.close()


async def test_wait_on_a_finished_saga_returns_at_once() -> None:
    """``wait`` on a terminal saga returns its record."""
    manager = manager_for(Script(), config=FAST)
    first = await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    again = await manager.wait("s-1", timeout=WAIT)
    assert again.status is P.COMPLETED
    assert again.version == first.version
    await manager.close()


async def test_wait_on_unknown_id_raises_not_found() -> None:
    """``wait`` on an id no saga has raises ``SagaNotFoundError``."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaNotFoundError, match="ghost"):
        await manager.wait("ghost", timeout=WAIT)
    await manager.close()


async def test_wait_timeout_raises_and_leaves_the_saga_running() -> None:
    """A wait that times out raises ``SagaTimeoutError``; the saga goes on."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    with pytest.raises(SagaTimeoutError) as info:
        await manager.wait(saga_id, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    release.set()
    assert (await manager.wait(saga_id, timeout=WAIT)).status is P.COMPLETED
    await manager.close()


async def test_wait_watches_a_saga_run_by_another_worker() -> None:
    """A manager can wait for a saga another manager on the same store runs."""
    store = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    runner = manager_for(script, store=store, config=FAST, worker_id="A")
    watcher = manager_for(script, store=store, config=FAST, worker_id="B")
    saga_id = await runner.start("scripted")
    await entered.wait()
    waiting = asyncio.create_task(watcher.wait(saga_id, timeout=WAIT))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    release.set()
    record = await waiting
    assert record.status is P.COMPLETED
    assert watcher.running() == ()
    await runner.close()
    await watcher.close()


async def test_cancelling_a_waiter_does_not_stop_the_saga() -> None:
    """Cancelling the task awaiting ``wait`` stops only the waiting."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    waiter = asyncio.create_task(manager.wait(saga_id))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    record = await manager.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.actions() == ["a", "b", "c"]
    await manager.close()


async def test_cancelling_execute_does_not_stop_the_saga() -> None:
    """Cancelling the caller of ``execute`` leaves the saga running to its end."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    manager = manager_for(script, config=FAST)
    caller = asyncio.create_task(manager.execute("scripted", saga_id="s-1"))
    await entered.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    record = await manager.wait("s-1", timeout=WAIT)
    assert record.status is P.COMPLETED
    await manager.close()


async def test_get_returns_the_current_record() -> None:
    """``get`` returns the stored record, or ``None`` for an unknown id."""
    manager = manager_for(Script(), config=FAST)
    record = await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    got = await manager.get("s-1")
    assert got is not None
    assert (got.status, got.version) == (record.status, record.version)
    assert await manager.get("ghost") is None
    await manager.close()


async def test_get_returns_a_copy() -> None:
    """Changing a record from ``get`` changes nothing stored."""
    manager = manager_for(Script(), config=FAST)
    await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    got = await manager.get("s-1")
    assert got is not None
    got.data["tampered"] = True
    again = await manager.get("s-1")
    assert again is not None
    assert "tampered" not in again.data
    await manager.close()


# --------------------------------------------------------------------------- list


async def listing_manager() -> tuple[SagaManager, list[str]]:
    """Three sagas of two names, started one second apart; the second one compensates."""
    clock = ManualClock()
    manager = SagaManager(InMemorySagaStore(clock=clock), config=FAST, clock=clock)
    ok_script, failing_script = Script(), Script()
    failing_script.behaviours["a"] = returning(SagaStepResult.fail("no"))
    manager.register(saga_class(ok_script, name="alpha"))
    manager.register(saga_class(failing_script, name="beta"))
    ids = []
    for name in ("alpha", "beta", "alpha"):
        ids.append((await manager.execute(name, timeout=WAIT)).saga_id)
        clock.advance(1)
    return manager, ids


async def test_list_is_newest_first() -> None:
    """``list`` returns sagas newest first."""
    manager, ids = await listing_manager()
    assert [record.saga_id for record in await manager.list()] == ids[::-1]
    await manager.close()


async def test_list_filters_by_name() -> None:
    """``saga_name`` keeps sagas of that name only."""
    manager, ids = await listing_manager()
    found = await manager.list(saga_name="alpha")
    assert [record.saga_id for record in found] == [ids[2], ids[0]]
    await manager.close()


async def test_list_filters_by_status() -> None:
    """``status`` keeps sagas in that status only."""
    manager, ids = await listing_manager()
    assert [r.saga_id for r in await manager.list(status=P.COMPENSATED)] == [ids[1]]
    assert len(await manager.list(status=P.COMPLETED)) == 2
    assert await manager.list(status=P.RUNNING) == []
    await manager.close()


async def test_list_respects_limit() -> None:
    """``limit`` caps the number of records, keeping the newest."""
    manager, ids = await listing_manager()
    assert [record.saga_id for record in await manager.list(limit=2)] == [ids[2], ids[1]]
    await manager.close()


# --------------------------------------------------------------------------- cancel


async def test_cancel_mid_step_compensates_with_the_reason() -> None:
    """``cancel`` stops the step, runs no later step, compensates, keeps the reason."""
    script = Script()
    stuck = script.behaviours["b"] = StuckStep()
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await stuck.entered.wait()
    record = await manager.cancel(saga_id, reason="customer changed their mind")
    assert stuck.cancellations == 1
    assert record.status is P.COMPENSATED
    assert "customer changed their mind" in (record.error or "")
    assert record.steps["b"].status is T.FAILED
    assert "c" not in record.steps
    assert script.actions() == ["a", "b"]
    assert script.undone() == ["a"]
    stored_record = await stored(manager.store, saga_id)
    assert stored_record.status is P.COMPENSATED
    await manager.close()


async def test_cancel_during_retry_delay_compensates() -> None:
    """A saga waiting to retry is cancelled without waiting out the delay."""
    script = Script()
    script.behaviours["b"] = raise_each(*(ConnectionError() for _ in range(10)))
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(retry_delay=60)})
    saga_id = await manager.start("scripted")
    async with asyncio.timeout(WAIT):
        while script.count("b") < 1:
            await asyncio.sleep(0.001)
    record = await asyncio.wait_for(manager.cancel(saga_id, reason="stop"), WAIT)
    assert record.status is P.COMPENSATED
    assert script.count("b") == 1
    assert script.undone() == ["a"]
    await manager.close()


async def test_cancel_with_failing_compensation_ends_failed() -> None:
    """If a compensation fails during a cancel, the saga ends FAILED."""
    script = Script()
    entered = asyncio.Event()
    script.behaviours["b"] = blocking(entered)
    script.undo_behaviours["a"] = raise_each(*(RuntimeError() for _ in range(10)))
    manager = manager_for(script, config=FAST, tuning={"a": Tuning(undo_max_retries=0)})
    saga_id = await manager.start("scripted")
    await entered.wait()
    record = await manager.cancel(saga_id, reason="stop")
    assert record.status is P.FAILED
    assert "'a'" in (record.error or "")
    await manager.close()


async def test_cancel_on_a_terminal_saga_is_a_no_op() -> None:
    """Cancelling a finished saga returns it unchanged."""
    script = Script()
    manager = manager_for(script, config=FAST)
    done = await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    again = await manager.cancel("s-1", reason="too late")
    assert again.status is P.COMPLETED
    assert again.version == done.version
    assert again.error is None
    assert script.undone() == []
    await manager.close()


async def test_cancel_unknown_id_raises_not_found() -> None:
    """Cancelling an id no saga has raises ``SagaNotFoundError``."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaNotFoundError):
        await manager.cancel("ghost")
    await manager.close()


async def test_cancel_of_a_saga_no_worker_runs_is_stored_for_a_worker() -> None:
    """A client's cancel of a free saga stores the request; the next worker compensates it.

    The client runs nothing (SPEC section 11): the worker claiming the saga sees the
    request and compensates instead of going on.
    """
    store = InMemorySagaStore()
    await store.save(seed_record("s-1", "scripted", done=["a"], current="b"))
    script = Script()
    client = manager_for(script, store=store, config=FAST)
    asked = await client.cancel("s-1", reason="abandoned")
    assert asked.status is P.RUNNING
    assert (asked.cancel_reason, asked.lease_owner) == ("abandoned", None)
    assert script.undone() == []  # nothing ran in the client
    worker = manager_for(script, store=store, config=FAST)
    assert await worker.recover() == 1
    record = await worker.wait("s-1", timeout=5)
    assert record.status is P.COMPENSATED
    assert "abandoned" in (record.error or "")
    assert record.failure is not None
    assert record.failure.kind == "cancelled"
    assert script.actions() == []
    assert script.undone() == ["a"]
    await client.close()
    await worker.close()


# --------------------------------------------------------------------------- resume


async def test_resume_runs_a_stored_saga_from_its_progress() -> None:
    """``resume`` continues a non-terminal saga after its last completed step."""
    store = InMemorySagaStore()
    await store.save(seed_record("s-1", "scripted", done=["a"], current="b"))
    script = Script()
    manager = manager_for(script, store=store, config=FAST)
    await manager.resume("s-1")
    record = await manager.wait("s-1", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.actions() == ["b", "c"]
    await manager.close()


async def test_resume_a_saga_held_by_a_live_worker_raises() -> None:
    """Resuming a saga another live worker runs raises ``SagaError``; the saga runs once."""
    store = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    owner = manager_for(script, store=store, config=FAST, worker_id="A")
    other = manager_for(script, store=store, config=FAST, worker_id="B")
    saga_id = await owner.start("scripted")
    await entered.wait()
    with pytest.raises(SagaError) as info:
        await other.resume(saga_id)
    assert isinstance(info.value, SagaLeaseError)
    release.set()
    await owner.wait(saga_id, timeout=WAIT)
    assert script.count("b") == 1
    await owner.close()
    await other.close()


async def test_resume_terminal_saga_is_a_no_op() -> None:
    """Resuming a finished saga runs nothing."""
    script = Script()
    manager = manager_for(script, config=FAST)
    done = await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    await manager.resume("s-1")
    assert manager.running() == ()
    assert (await stored(manager.store, "s-1")).version == done.version
    assert script.actions() == ["a", "b", "c"]
    await manager.close()


async def test_resume_unknown_id_raises_not_found() -> None:
    """Resuming an id no saga has raises ``SagaNotFoundError``."""
    manager = manager_for(Script(), config=FAST)
    with pytest.raises(SagaNotFoundError):
        await manager.resume("ghost")
    await manager.close()


async def test_resume_refuses_a_changed_definition() -> None:
    """Resuming under a definition that no longer matches raises and leaves the saga."""
    store = InMemorySagaStore()
    seeded = seed_record("s-1", "scripted", done=["a", "b"], current="c")
    await store.save(seeded)
    script = Script()
    manager = manager_for(script, ("b", "a", "c"), store=store, config=FAST)
    with pytest.raises(SagaDefinitionError):
        await manager.resume("s-1")
    assert progress(await stored(store, "s-1")) == progress(seeded)
    assert script.calls == []
    await manager.close()


# --------------------------------------------------------------------------- close


async def test_close_waits_for_sagas_finishing_in_time() -> None:
    """``close`` lets running sagas finish within ``shutdown_timeout``."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=WAIT)
    manager = manager_for(script, config=config)
    saga_id = await manager.start("scripted")
    await entered.wait()
    closing = asyncio.create_task(manager.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    release.set()
    await asyncio.wait_for(closing, WAIT)
    assert (await stored(manager.store, saga_id)).status is P.COMPLETED


async def test_close_stops_sagas_without_compensating() -> None:
    """After ``shutdown_timeout`` running sagas stop, stay RUNNING, leases released."""
    store = InMemorySagaStore()
    script = Script()
    stuck = script.behaviours["b"] = StuckStep()
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=0.05)
    manager = manager_for(script, store=store, config=config)
    saga_id = await manager.start("scripted")
    await stuck.entered.wait()
    await asyncio.wait_for(manager.close(), WAIT)
    record = await stored(store, saga_id)
    assert stuck.cancellations == 1
    assert record.status is P.RUNNING
    assert record.lease_owner is None
    assert record.step_statuses().get("b") is not T.FAILED
    assert record.error is None
    assert script.undone() == []


async def test_stopped_saga_is_resumed_at_once_by_another_worker() -> None:
    """A saga stopped by shutdown can be recovered by another worker immediately."""
    store = InMemorySagaStore()
    script = Script()
    entered = asyncio.Event()
    first_call = [True]

    async def step_b(ctx: SagaContext) -> object:
        if first_call[0]:
            first_call[0] = False
            entered.set()
            await asyncio.Event().wait()
        return {"resumed": True}

    script.behaviours["b"] = step_b
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=0.01)
    first = manager_for(script, store=store, config=config, worker_id="A")
    saga_id = await first.start("scripted")
    await entered.wait()
    await first.close()
    second = manager_for(script, store=store, config=FAST, worker_id="B")
    assert await second.recover() == 1
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.steps["b"].output == {"resumed": True}
    assert script.actions() == ["a", "b", "b", "c"]
    await second.close()


async def test_async_with_closes_the_manager() -> None:
    """``async with manager`` stops running sagas on exit, leaving them resumable."""
    store = InMemorySagaStore()
    script = Script()
    entered = asyncio.Event()
    script.behaviours["b"] = blocking(entered)
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=0.01)
    async with manager_for(script, store=store, config=config) as manager:
        saga_id = await manager.start("scripted")
        await entered.wait()
    record = await stored(store, saga_id)
    assert record.status is P.RUNNING
    assert record.lease_owner is None
    assert manager.running() == ()
    with pytest.raises(SagaError):
        await manager.start("scripted")


async def test_shutdown_during_compensation_leaves_it_compensating() -> None:
    """A compensation stopped by shutdown stays COMPENSATING and resumes elsewhere."""
    store = InMemorySagaStore()
    script = Script()
    script.behaviours["c"] = returning(SagaStepResult.fail("declined"))
    entered = asyncio.Event()
    first_call = [True]

    async def undo_b(ctx: SagaContext) -> object:
        if first_call[0]:
            first_call[0] = False
            entered.set()
            await asyncio.Event().wait()
        return None

    script.undo_behaviours["b"] = undo_b
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=0.01)
    first = manager_for(script, store=store, config=config, worker_id="A")
    saga_id = await first.start("scripted")
    await entered.wait()
    await first.close()
    stopped = await stored(store, saga_id)
    assert stopped.status is P.COMPENSATING
    assert stopped.lease_owner is None
    second = manager_for(script, store=store, config=FAST, worker_id="B")
    assert await second.recover() == 1
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert script.undone() == ["b", "b", "a"]
    await second.close()


async def test_attempt_cut_short_by_shutdown_does_not_count() -> None:
    """A step stopped by shutdown does not use up ``max_retries``."""
    store = InMemorySagaStore()
    script = Script()
    entered = asyncio.Event()
    first_call = [True]

    async def step_b(ctx: SagaContext) -> object:
        if first_call[0]:
            first_call[0] = False
            entered.set()
            await asyncio.Event().wait()
        return None

    script.behaviours["b"] = step_b
    tuning = {"b": Tuning(max_retries=0)}
    config = SagaConfig(retry_delay_seconds=0, shutdown_timeout=0.01)
    first = manager_for(script, store=store, config=config, worker_id="A", tuning=tuning)
    saga_id = await first.start("scripted")
    await entered.wait()
    await first.close()
    second = manager_for(script, store=store, config=FAST, worker_id="B", tuning=tuning)
    await second.recover()
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.steps["b"].attempts == 1
    assert script.calls.count("b:1") == 2
    await second.close()


async def test_close_is_idempotent() -> None:
    """Closing twice is harmless."""
    manager = manager_for(Script(), config=FAST)
    await manager.close()
    await manager.close()
    with pytest.raises(SagaError, match="closed"):
        await manager.start("scripted")


# --------------------------------------------------------------------------- cleanup


async def test_cleanup_deletes_only_old_terminal_sagas() -> None:
    """``cleanup`` removes terminal sagas older than the setting, nothing else."""
    clock = ManualClock()
    store = InMemorySagaStore(clock=clock)
    manager = manager_for(Script(), store=store, config=FAST, clock=clock)
    old = await manager.execute("scripted", timeout=WAIT)
    await store.save(seed_record("stuck", "scripted", done=["a"], current="b"))
    clock.advance(25 * 3600)
    recent = await manager.execute("scripted", timeout=WAIT)
    assert await manager.cleanup() == 1
    remaining = {record.saga_id for record in await store.list()}
    assert remaining == {recent.saga_id, "stuck"}
    assert old.saga_id not in remaining
    await manager.close()


async def test_cleanup_respects_the_configured_age() -> None:
    """A terminal saga younger than ``cleanup_completed_after_hours`` is kept."""
    clock = ManualClock()
    store = InMemorySagaStore(clock=clock)
    config = SagaConfig(retry_delay_seconds=0, cleanup_completed_after_hours=48)
    manager = manager_for(Script(), store=store, config=config, clock=clock)
    await manager.execute("scripted", timeout=WAIT)
    clock.advance(25 * 3600)
    assert await manager.cleanup() == 0
    clock.advance(24 * 3600)
    assert await manager.cleanup() == 1
    await manager.close()


async def test_cleanup_zero_keeps_everything() -> None:
    """With ``cleanup_completed_after_hours=0`` nothing is ever deleted."""
    clock = ManualClock()
    store = InMemorySagaStore(clock=clock)
    config = SagaConfig(retry_delay_seconds=0, cleanup_completed_after_hours=0)
    manager = manager_for(Script(), store=store, config=config, clock=clock)
    await manager.execute("scripted", timeout=WAIT)
    clock.advance(10_000 * 3600)
    assert await manager.cleanup() == 0
    assert len(await store.list()) == 1
    await manager.close()
