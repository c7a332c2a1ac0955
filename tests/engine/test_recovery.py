"""Taking sagas over: crashes, poison sagas, recover() (SPEC 7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.errors import (
    SagaDefinitionError,
    SagaNotFoundError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.testing import FaultyStore, ManualClock
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Crash,
    Fault,
    FaultStore,
    Script,
    Tuning,
    await_crash,
    blocking,
    check_at_least_once,
    crash_and_recover,
    crash_first,
    failing_c,
    finish_run,
    manager_for,
    outcome,
    progress,
    reference,
    seed_record,
    settle,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


# --------------------------------------------------------------------------- crashes


async def test_crash_before_the_first_write_stores_nothing() -> None:
    """A crash before ``start()``'s write leaves nothing behind and runs no step."""
    inner = InMemorySagaStore()
    script = Script()
    manager = manager_for(script, store=FaultStore(inner, Fault(crash_before=1)), config=FAST)
    with pytest.raises(Crash):
        await manager.start("scripted", {"order_id": "o-1"}, "s-1")
    assert await inner.list() == []
    assert script.calls == []
    await manager.close()


@pytest.mark.parametrize(
    "fault",
    [Fault(crash_before=w) for w in (2, 3, 4)] + [Fault(crash_after=w) for w in (1, 2, 3, 4)],
    ids=repr,
)
async def test_crash_while_running_forward_recovers_to_the_same_outcome(fault: Fault) -> None:
    """After a crash at any write of a completing saga, recovery reaches the same end."""
    expected = await reference(Script)
    crashed = await crash_and_recover(Script, fault)
    assert outcome(crashed.final) == outcome(expected)
    check_at_least_once(crashed)


@pytest.mark.parametrize(
    "fault",
    [Fault(crash_before=w) for w in (2, 3, 4, 5, 6)]
    + [Fault(crash_after=w) for w in (1, 2, 3, 4, 5, 6)],
    ids=repr,
)
async def test_crash_while_compensating_recovers_to_the_same_outcome(fault: Fault) -> None:
    """After a crash at any write of a compensating saga, recovery reaches the same end."""

    def make() -> Script:
        return failing_c(Script())

    expected = await reference(make)
    crashed = await crash_and_recover(make, fault)
    assert outcome(crashed.final) == outcome(expected)
    check_at_least_once(crashed)


async def test_crash_inside_a_step_reruns_only_that_step() -> None:
    """A worker dying inside step b: a, already durable, never runs again; b runs twice."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first()
    first = manager_for(script, store=inner, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=inner, config=FAST, worker_id="w")
    assert await second.recover() == 1
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.actions() == ["a", "b", "b", "c"]
    assert record.data["survived"] is True
    await first.close()
    await second.close()


async def test_crash_inside_a_compensation_reruns_only_that_compensation() -> None:
    """A worker dying inside a compensation: on recovery it runs again, then the rest."""
    inner = InMemorySagaStore()
    script = failing_c(Script())
    script.undo_behaviours["b"] = crash_first()
    first = manager_for(script, store=inner, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=inner, config=FAST, worker_id="w")
    assert await second.recover() == 1
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert script.undone() == ["b", "b", "a"]
    assert script.actions() == ["a", "b", "c"]
    await first.close()
    await second.close()


async def test_attempt_cut_short_by_a_crash_does_not_count() -> None:
    """A crash during an attempt does not use up ``max_retries``."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first()
    tuning = {"b": Tuning(max_retries=0)}
    first = manager_for(script, store=inner, config=FAST, worker_id="w", tuning=tuning)
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=inner, config=FAST, worker_id="w", tuning=tuning)
    await second.recover()
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.steps["b"].attempts == 1
    assert script.calls.count("b:1") == 2
    await first.close()
    await second.close()


@pytest.mark.parametrize("fault", [Fault(crash_before=1), Fault(crash_after=1)], ids=repr)
async def test_crash_during_recover_is_recovered_again(fault: Fault) -> None:
    """A worker dying at its claim during ``recover()`` leaves the saga recoverable."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first()
    first = manager_for(script, store=inner, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=FaultStore(inner, fault), config=FAST, worker_id="w")
    with pytest.raises(Crash):
        await second.recover()
    third = manager_for(script, store=inner, config=FAST, worker_id="w")
    assert await third.recover() == 1
    record = await third.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.count("a") == 1
    for manager in (first, second, third):
        await manager.close()


# --------------------------------------------------------------------------- poison sagas


async def recover_until_terminal(
    inner: InMemorySagaStore, script: Script, config: SagaConfig, saga_id: str
) -> tuple[SagaRecord, int, list[SagaManager]]:
    """Take the saga over with fresh managers until it ends; return it and the takeovers."""
    managers: list[SagaManager] = []
    record = await stored(inner, saga_id)
    while not record.is_terminal and len(managers) < 10:
        manager = manager_for(script, store=inner, config=config, worker_id="w")
        managers.append(manager)
        assert await manager.recover() == 1
        await finish_run(saga_id)
        record = await stored(inner, saga_id)
    return record, len(managers), managers


async def test_poison_step_is_failed_after_max_recovery_attempts() -> None:
    """A step that kills its worker every time is failed after N takeovers; saga compensates."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first(times=100)
    config = SagaConfig(retry_delay_seconds=0, max_recovery_attempts=2)
    first = manager_for(script, store=inner, config=config, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    record, takeovers, managers = await recover_until_terminal(inner, script, config, saga_id)
    assert record.status is P.COMPENSATED
    assert takeovers == 3
    assert script.count("b") == 3  # the first run and two takeovers that crashed
    assert record.steps["b"].status is T.FAILED
    assert "kept crashing" in (record.steps["b"].error or "")
    assert "kept crashing" in (record.error or "")
    assert script.undone() == ["a"]
    for manager in [first, *managers]:
        await manager.close()


async def test_poison_compensation_is_failed_and_the_rest_still_run() -> None:
    """A compensation that kills its worker every time is failed; the others run; saga FAILED."""
    inner = InMemorySagaStore()
    script = failing_c(Script())
    script.undo_behaviours["b"] = crash_first(times=100)
    config = SagaConfig(retry_delay_seconds=0, max_recovery_attempts=1)
    first = manager_for(script, store=inner, config=config, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    record, takeovers, managers = await recover_until_terminal(inner, script, config, saga_id)
    assert record.status is P.FAILED
    assert takeovers == 2
    assert script.undone().count("b") == 2
    assert record.steps["b"].status is T.FAILED
    assert "kept crashing" in (record.steps["b"].compensation_error or "")
    assert record.steps["a"].status is T.COMPENSATED
    assert "'b'" in (record.error or "")
    for manager in [first, *managers]:
        await manager.close()


async def test_progress_resets_the_recovery_count() -> None:
    """Takeovers that make progress are not counted against ``max_recovery_attempts``."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours = {"b": crash_first(), "c": crash_first()}
    config = SagaConfig(retry_delay_seconds=0, max_recovery_attempts=1)
    first = manager_for(script, store=inner, config=config, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    record, takeovers, managers = await recover_until_terminal(inner, script, config, saga_id)
    assert record.status is P.COMPLETED
    assert takeovers == 2
    for manager in [first, *managers]:
        await manager.close()


# --------------------------------------------------------------------------- recover


async def test_recover_resumes_every_non_terminal_saga() -> None:
    """``recover`` resumes stored sagas of registered names and returns how many."""
    store = InMemorySagaStore()
    await store.save(seed_record("s-1", "scripted", current="a", status=P.PENDING))
    await store.save(seed_record("s-2", "scripted", done=["a"], current="b"))
    await store.save(seed_record("s-3", "scripted", done=["a", "b"], current="c"))
    script = Script()
    manager = manager_for(script, store=store, config=FAST)
    assert await manager.recover() == 3
    for saga_id in ("s-1", "s-2", "s-3"):
        assert (await manager.wait(saga_id, timeout=WAIT)).status is P.COMPLETED
    assert sorted(script.actions()) == sorted(["a", "b", "c", "b", "c", "c"])
    assert manager.recovery_problems == []
    await manager.close()


async def test_recover_resumes_a_compensating_saga() -> None:
    """A saga stored mid-compensation finishes compensating."""
    store = InMemorySagaStore()
    seeded = seed_record("s-1", "scripted", done=["a", "b"], status=P.COMPENSATING)
    seeded.steps["b"].status = T.COMPENSATED
    seeded.error = "step 'c' failed: declined"
    await store.save(seeded)
    script = Script()
    manager = manager_for(script, store=store, config=FAST)
    assert await manager.recover() == 1
    record = await manager.wait("s-1", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert script.undone() == ["a"]
    await manager.close()


async def test_recover_with_nothing_to_do_returns_zero() -> None:
    """``recover`` on a store of finished sagas resumes nothing."""
    manager = manager_for(Script(), config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert await manager.recover() == 0
    await manager.close()


async def test_recover_leaves_unregistered_sagas_untouched_and_reports_them() -> None:
    """A saga of a name not registered here is left as is and listed in problems."""
    store = InMemorySagaStore()
    seeded = seed_record("s-x", "unknown_saga", done=["a"], current="b")
    await store.save(seeded)
    manager = manager_for(Script(), store=store, config=FAST)
    assert await manager.recover() == 0
    after = await stored(store, "s-x")
    assert progress(after) == progress(seeded)
    assert after.version == seeded.version
    assert after.lease_owner is None
    [problem] = manager.recovery_problems
    assert problem.saga_id == "s-x"
    assert isinstance(problem.error, SagaNotFoundError)
    await manager.close()


@pytest.mark.parametrize(
    "steps",
    [("a", "b2", "c"), ("a", "c"), ("b", "a", "c"), ("a", "x", "b", "c")],
    ids=["renamed", "removed", "reordered", "inserted"],
)
async def test_recover_refuses_a_changed_definition(steps: tuple[str, ...]) -> None:
    """Renamed, removed, reordered or inserted steps: the saga is left untouched, reported."""
    store = InMemorySagaStore()
    seeded = seed_record("s-1", "scripted", done=["a", "b"], current="c")
    await store.save(seeded)
    script = Script()
    manager = manager_for(script, steps, store=store, config=FAST)
    assert await manager.recover() == 0
    await settle(manager)
    after = await stored(store, "s-1")
    assert progress(after) == progress(seeded)
    assert after.lease_owner is None
    assert script.calls == []
    [problem] = manager.recovery_problems
    assert problem.saga_id == "s-1"
    assert isinstance(problem.error, SagaDefinitionError)
    await manager.close()


async def test_refused_saga_recovers_once_the_definition_is_restored() -> None:
    """A saga refused for a changed definition is not lost: the right one resumes it."""
    store = InMemorySagaStore()
    await store.save(seed_record("s-1", "scripted", done=["a", "b"], current="c"))
    wrong = manager_for(Script(), ("b", "a", "c"), store=store, config=FAST, worker_id="A")
    assert await wrong.recover() == 0
    script = Script()
    right = manager_for(script, store=store, config=FAST, worker_id="B")
    assert await right.recover() == 1
    assert (await right.wait("s-1", timeout=WAIT)).status is P.COMPLETED
    assert script.actions() == ["c"]
    await wrong.close()
    await right.close()


async def test_recover_allows_steps_appended_to_the_definition() -> None:
    """Steps added after the last recorded one run on resume."""
    store = InMemorySagaStore()
    await store.save(seed_record("s-1", "scripted", done=["a", "b"], current="c"))
    script = Script()
    manager = manager_for(script, ("a", "b", "c", "d"), store=store, config=FAST)
    assert await manager.recover() == 1
    record = await manager.wait("s-1", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.actions() == ["c", "d"]
    await manager.close()


async def test_recover_skips_sagas_held_by_a_live_worker() -> None:
    """``recover`` does not take a saga another live worker runs."""
    store = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    owner = manager_for(script, store=store, config=FAST, worker_id="A")
    saga_id = await owner.start("scripted")
    await entered.wait()
    other = manager_for(script, store=store, config=FAST, worker_id="B")
    assert await other.recover() == 0
    release.set()
    await owner.wait(saga_id, timeout=WAIT)
    assert script.count("b") == 1
    await owner.close()
    await other.close()


async def test_recover_never_reruns_a_saga_this_manager_runs() -> None:
    """A saga running here is not claimed again by this manager's ``recover``, lease or not."""
    clock = ManualClock()
    store = InMemorySagaStore(clock=clock)
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    manager = manager_for(script, store=store, config=FAST, clock=clock)
    saga_id = await manager.start("scripted")
    await entered.wait()
    clock.advance(FAST.lease_seconds + 1)  # the lease lapsed, e.g. a heartbeat came late
    assert await manager.recover() == 0
    release.set()
    record = await manager.wait(saga_id, timeout=WAIT)
    await settle(manager)
    assert record.status is P.COMPLETED
    assert script.actions() == ["a", "b", "c"]
    await manager.close()


async def test_recover_retries_while_the_store_is_unavailable() -> None:
    """A claim failing with SagaStoreUnavailableError is retried; no saga is dropped."""
    inner = InMemorySagaStore()
    await inner.save(seed_record("s-1", "scripted", done=["a"], current="b"))
    script = Script()
    store = FaultStore(inner, Fault(unavailable={1, 2}))
    manager = manager_for(script, store=store, config=FAST)
    assert await manager.recover() == 1
    assert (await manager.wait("s-1", timeout=WAIT)).status is P.COMPLETED
    assert script.actions() == ["b", "c"]
    await manager.close()


async def test_two_workers_recovering_at_once_run_each_saga_once() -> None:
    """Concurrent ``recover`` calls on two workers never run one saga twice."""
    store = InMemorySagaStore()
    for n in range(5):
        await store.save(seed_record(f"s-{n}", "scripted", done=["a"], current="b"))
    script = Script()
    first = manager_for(script, store=store, config=FAST, worker_id="A")
    second = manager_for(script, store=store, config=FAST, worker_id="B")
    counts = await asyncio.gather(first.recover(), second.recover())
    assert sum(counts) == 5
    for n in range(5):
        await first.wait(f"s-{n}", timeout=WAIT)
    assert script.count("b") == 5
    assert script.count("c") == 5
    await first.close()
    await second.close()


# --------------------------------------------------------------------------- stranded sagas


async def free_saga(store: InMemorySagaStore) -> str:
    """Store a saga no worker holds (started, then released by a shutdown)."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["a"] = blocking(entered, release)
    first = manager_for(script, store=store, config=SagaConfig(shutdown_timeout=0))
    saga_id = await first.start("scripted")
    await entered.wait()
    await first.close()
    return saga_id


async def test_a_claim_whose_reply_was_lost_strands_nothing() -> None:
    """A claim that committed but whose reply was lost: the same worker still runs it."""
    store = InMemorySagaStore()
    saga_id = await free_saga(store)
    manager = manager_for(Script(), store=FaultyStore(store, ambiguous_writes={1}), config=FAST)
    assert await manager.recover() == 1
    assert (await manager.wait(saga_id, timeout=WAIT)).status is P.COMPLETED
    assert manager.recovery_problems == []
    await manager.close()


async def test_resume_after_a_lost_claim_reply_runs_the_saga() -> None:
    """``resume(id)`` whose claim reply was lost: retrying it runs the saga, once."""
    store = InMemorySagaStore()
    saga_id = await free_saga(store)
    script = Script()
    manager = manager_for(script, store=FaultyStore(store, ambiguous_writes={1}), config=FAST)
    with pytest.raises(SagaStoreUnavailableError):
        await manager.resume(saga_id)
    await manager.resume(saga_id)  # the caller retries: the saga is ours already
    assert (await manager.wait(saga_id, timeout=WAIT)).status is P.COMPLETED
    assert script.count("a") == 1
    await manager.close()


async def test_recover_never_adopts_a_saga_its_worker_is_starting() -> None:
    """A saga this worker's ``start()`` is storing is never launched twice by ``recover()``."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["a"] = blocking(entered, release)
    store = InMemorySagaStore()
    manager = manager_for(script, store=store, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    assert await manager.recover() == 0
    release.set()
    assert (await manager.wait(saga_id, timeout=WAIT)).status is P.COMPLETED
    assert script.count("a") == 1
    await manager.close()


class SlowListing(InMemorySagaStore):
    """Takes its listing of running sagas at once but hands it over only once ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.listing = asyncio.Event()
        self.go = asyncio.Event()

    async def list(self, **filters: Any) -> list[SagaRecord]:
        snapshot = await super().list(**filters)
        if filters.get("status") is SagaStatus.RUNNING:
            self.listing.set()
            await self.go.wait()
        return snapshot


async def test_a_stale_listing_never_resumes_a_saga_that_just_finished() -> None:
    """A saga seen running under this worker's lease, finished since: not run again."""
    store = SlowListing()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["c"] = blocking(entered, release)
    manager = manager_for(script, store=store, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    recovering = asyncio.create_task(manager.recover())
    await store.listing.wait()  # the listing saw the saga running under this worker
    release.set()
    await manager.wait(saga_id, timeout=WAIT)  # it finished and left this worker
    store.go.set()
    assert await recovering == 0
    await settle(manager)
    assert script.actions() == ["a", "b", "c"]
    await manager.close()
