"""The saga deadline: counted from start, survives restarts, compensates (SPEC 4)."""

from __future__ import annotations

import asyncio

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Script,
    StuckStep,
    await_crash,
    blocking,
    crash_first,
    failing_c,
    manager_for,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


# --------------------------------------------------------------------------- the saga deadline


async def test_deadline_cancels_the_running_step_and_compensates() -> None:
    """When the saga's deadline passes, the step is cancelled and the saga compensates."""
    script = Script()
    stuck = script.behaviours["b"] = StuckStep()
    manager = manager_for(script, config=SagaConfig(default_timeout_seconds=0.05))
    record = await manager.execute("scripted", timeout=WAIT)
    assert stuck.cancellations == 1
    assert record.status is P.COMPENSATED
    assert "timed out" in (record.error or "")
    assert record.steps["b"].status is T.FAILED
    assert "c" not in record.steps
    assert script.undone() == ["a"]
    await manager.close()


async def test_deadline_is_stored_on_the_record() -> None:
    """``deadline_at`` is ``start()`` + ``default_timeout_seconds``."""
    clock = ManualClock()
    manager = manager_for(Script(), config=SagaConfig(default_timeout_seconds=42), clock=clock)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.created_at is not None
    assert record.deadline_at is not None
    assert (record.deadline_at - record.created_at).total_seconds() == 42
    await manager.close()


async def test_deadline_survives_a_restart() -> None:
    """A saga resumed after its deadline passed compensates instead of running on."""
    clock = ManualClock()
    inner = InMemorySagaStore(clock=clock)
    script = Script()
    script.behaviours["b"] = crash_first()
    config = SagaConfig(retry_delay_seconds=0, default_timeout_seconds=10)
    first = manager_for(script, store=inner, config=config, worker_id="w", clock=clock)
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    clock.advance(60)
    second = manager_for(script, store=inner, config=config, worker_id="w", clock=clock)
    await second.recover()
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert "timed out" in (record.error or "")
    assert "c" not in script.actions()
    await first.close()
    await second.close()


async def test_deadline_does_not_cancel_compensations() -> None:
    """A compensation running when the deadline passes is not cancelled."""
    script = failing_c(Script())
    entered, release = asyncio.Event(), asyncio.Event()
    undo_b = blocking(entered, release)
    script.undo_behaviours["b"] = undo_b
    manager = manager_for(script, config=SagaConfig(default_timeout_seconds=0.05))
    saga_id = await manager.start("scripted")
    await entered.wait()
    await asyncio.sleep(0.1)  # the deadline passes while the compensation runs
    release.set()
    record = await manager.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert record.steps["b"].status is T.COMPENSATED
    assert record.steps["b"].compensation_attempts == 1
    await manager.close()
