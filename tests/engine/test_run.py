"""Stopping a run: cancel stops the running step and compensates (SPEC 6)."""

from __future__ import annotations

import asyncio

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    Script,
    StuckStep,
    manager_for,
    settle,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_error_raised_by_a_step_is_not_a_step_failure() -> None:
    """A step raising CancelledError is not swallowed as a failure: no retry, no compensation."""
    script = Script()

    async def cancelled(ctx: SagaContext) -> object:
        raise asyncio.CancelledError

    script.behaviours["b"] = cancelled
    inner = InMemorySagaStore()
    manager = manager_for(script, store=inner, config=FAST)
    saga_id = await manager.start("scripted")
    await settle(manager)
    record = await stored(inner, saga_id)
    assert script.count("b") == 1
    assert script.undone() == []
    assert record.status is P.RUNNING
    assert record.lease_owner is None
    await manager.close()


async def test_step_sees_cancelled_error_when_cancelled() -> None:
    """``cancel()`` delivers CancelledError into the running step."""
    script = Script()
    stuck = script.behaviours["b"] = StuckStep()
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await stuck.entered.wait()
    record = await manager.cancel(saga_id, reason="by test")
    assert stuck.cancellations == 1
    assert record.steps["b"].status is T.FAILED
    assert "by test" in (record.steps["b"].error or "")
    await manager.close()
