"""Leases and the heartbeat: renewal, loss, takeover (SPEC 7)."""

from __future__ import annotations

import asyncio

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    FaultStore,
    Script,
    blocking,
    manager_for,
    settle,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


# --------------------------------------------------------------------------- leases


async def test_zombie_worker_does_not_write_after_takeover() -> None:
    """A worker whose lease was taken over finishes its step but writes nothing."""
    clock = ManualClock()
    inner = InMemorySagaStore(clock=clock)
    zombie_view = FaultStore(inner)
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    first_call = [True]

    async def step_a(ctx: SagaContext) -> object:
        if first_call[0]:
            first_call[0] = False
            entered.set()
            await release.wait()
            ctx["by"] = "zombie"
            return {"by": "zombie"}
        ctx["by"] = "successor"
        return {"by": "successor"}

    script.behaviours["a"] = step_a
    zombie = manager_for(script, store=zombie_view, config=FAST, worker_id="A", clock=clock)
    saga_id = await zombie.start("scripted")
    await entered.wait()
    clock.advance(FAST.lease_seconds + 1)  # A's lease expires; its deadline has not
    successor = manager_for(script, store=inner, config=FAST, worker_id="B", clock=clock)
    assert await successor.recover() == 1
    done = await successor.wait(saga_id, timeout=WAIT)
    saves_before = len(zombie_view.saves)
    release.set()
    await settle(zombie)
    after = await stored(inner, saga_id)
    assert done.status is P.COMPLETED
    assert len(zombie_view.saves) == saves_before
    assert after.version == done.version
    assert after.status is P.COMPLETED
    assert after.data["by"] == "successor"
    assert script.actions() == ["a", "a", "b", "c"]
    await zombie.close()
    await successor.close()


async def test_heartbeat_notices_lost_lease_and_stops_the_step() -> None:
    """A worker whose lease was taken over stops its running step without writing."""
    clock = ManualClock()
    inner = InMemorySagaStore(clock=clock)
    zombie_view = FaultStore(inner)
    script = Script()
    entered, stopped = asyncio.Event(), asyncio.Event()
    first_call = [True]

    async def step_a(ctx: SagaContext) -> object:
        if first_call[0]:
            first_call[0] = False
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                stopped.set()
                raise
        return None

    script.behaviours["a"] = step_a
    fast_beat = SagaConfig(retry_delay_seconds=0, lease_seconds=0.03)
    zombie = manager_for(script, store=zombie_view, config=fast_beat, worker_id="A", clock=clock)
    saga_id = await zombie.start("scripted")
    await entered.wait()
    saves_before = len(zombie_view.saves)
    clock.advance(FAST.lease_seconds + 1)
    successor = manager_for(script, store=inner, config=FAST, worker_id="B", clock=clock)
    assert await successor.recover() == 1
    await asyncio.wait_for(stopped.wait(), WAIT)
    record = await successor.wait(saga_id, timeout=WAIT)
    await settle(zombie)
    assert record.status is P.COMPLETED
    assert len(zombie_view.saves) == saves_before
    await zombie.close()
    await successor.close()


async def test_heartbeat_keeps_a_long_step_leased() -> None:
    """A step running longer than the lease is not taken over while heartbeats succeed."""
    inner = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    config = SagaConfig(retry_delay_seconds=0, lease_seconds=0.05)
    owner = manager_for(script, store=inner, config=config, worker_id="A")
    saga_id = await owner.start("scripted")
    await entered.wait()
    await asyncio.sleep(0.25)  # five lease lengths
    other = manager_for(script, store=inner, config=FAST, worker_id="B")
    assert await other.recover() == 0
    release.set()
    record = await owner.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.count("b") == 1
    await owner.close()
    await other.close()


async def test_live_lease_blocks_other_workers() -> None:
    """While a worker runs a saga, another worker's ``recover()`` claims nothing."""
    inner = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    owner = manager_for(script, store=inner, config=FAST, worker_id="A")
    saga_id = await owner.start("scripted")
    await entered.wait()
    other = manager_for(script, store=inner, config=FAST, worker_id="B")
    assert await other.recover() == 0
    assert other.running() == ()
    release.set()
    await owner.wait(saga_id, timeout=WAIT)
    assert script.count("b") == 1
    await owner.close()
    await other.close()


async def test_terminal_saga_releases_its_lease() -> None:
    """A finished saga holds no lease."""
    manager = manager_for(Script(), config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.lease_owner is None
    assert record.lease_expires_at is None
    await manager.close()
