"""``compensate_failed=True``: a step whose action failed is compensated too (SPEC section 11).

For a step whose side effect may exist although it did not complete (a lost reply, a
timeout, a cancel, a crash loop): its own compensation runs first, and can tell from
``ctx.action_completed`` that the action did not complete.
"""

from __future__ import annotations

import asyncio

import pytest

from lexigram.events.sagas import (
    OrchestratedStep,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaDefinitionError,
    SagaManager,
    SagaOrchestrator,
    SagaStatus,
    SagaStepStatus,
    saga_step,
)
from tests.support.helpers import WAIT, Script, blocking, manager_for, raise_each

FAST = SagaConfig(retry_delay_seconds=0, max_retries_per_step=0)


class Charge(SagaBase):
    """Reserve, then charge a card whose gateway may time out after taking the money."""

    name = "charge"

    def __init__(self, log: list[tuple[str, bool]], charge: Script) -> None:
        self.log = log
        self.charge_script = charge

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        ctx["reserved"] = True

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        self.log.append(("release", ctx.action_completed))

    @saga_step("charge", compensate_failed=True)
    async def charge(self, ctx: SagaContext) -> object:
        return await self.charge_script.act("charge", ctx)

    @saga_step("charge", compensation=True)
    async def refund(self, ctx: SagaContext) -> None:
        self.log.append(("refund", ctx.action_completed))


def charge_manager(log: list[tuple[str, bool]], charge: Script, **options: object) -> SagaManager:
    manager = SagaManager(config=FAST, **options)  # type: ignore[arg-type]
    manager.register(Charge, factory=lambda: Charge(log, charge))
    return manager


async def test_a_failed_step_is_compensated_first_and_knows_its_action_failed() -> None:
    """The failed step's compensation runs before the earlier steps', told it failed."""
    log: list[tuple[str, bool]] = []
    charge = Script()
    charge.behaviours["charge"] = raise_each(TimeoutError("gateway did not answer"))
    manager = charge_manager(log, charge)
    record = await manager.execute("charge", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert log == [("refund", False), ("release", True)]
    step = record.steps["charge"]
    assert step.status is SagaStepStatus.COMPENSATED
    assert "gateway did not answer" in (step.error or "")
    await manager.close()


async def test_without_the_flag_a_failed_step_is_not_compensated() -> None:
    """By default only completed steps are compensated (invariant 2)."""
    script = Script()
    script.behaviours["b"] = raise_each(TimeoutError("lost reply"))
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert script.undone() == ["a"]
    assert record.steps["b"].status is SagaStepStatus.FAILED
    await manager.close()


async def test_a_step_cancelled_while_it_runs_is_compensated() -> None:
    """A cancel stops the step in flight; with the flag its compensation runs."""
    log: list[tuple[str, bool]] = []
    charge = Script()
    entered = asyncio.Event()
    charge.behaviours["charge"] = blocking(entered)
    manager = charge_manager(log, charge)
    saga_id = await manager.start("charge")
    await asyncio.wait_for(entered.wait(), timeout=WAIT)
    record = await manager.cancel(saga_id, reason="customer left")
    assert record.status is SagaStatus.COMPENSATED
    assert log == [("refund", False), ("release", True)]
    await manager.close()


async def test_a_timed_out_orchestrated_step_is_compensated() -> None:
    """``OrchestratedStep(..., compensate_failed=True)`` does the same in a flow."""
    undone: list[tuple[str, bool]] = []

    async def ship(ctx: SagaContext) -> None:
        await asyncio.sleep(10)

    async def unship(ctx: SagaContext) -> None:
        undone.append(("unship", ctx.action_completed))

    orchestrator = SagaOrchestrator(config=FAST)
    orchestrator.define(
        "ship",
        [OrchestratedStep("ship", ship, timeout=0.05, compensation=unship, compensate_failed=True)],
    )
    record = await orchestrator.execute("ship", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert record.failure.kind == "timeout"
    assert undone == [("unship", False)]
    await orchestrator.close()


async def test_a_redrive_compensates_a_failed_step_again() -> None:
    """After a compensate_failed step's compensation gave up, ``retry()`` runs it again."""
    log: list[tuple[str, bool]] = []
    charge = Script()
    charge.behaviours["charge"] = raise_each(TimeoutError("lost reply"))
    refusals = [RuntimeError("refund service down")]

    class Flaky(Charge):
        @saga_step("charge", compensation=True)
        async def refund(self, ctx: SagaContext) -> None:
            if refusals:
                raise refusals.pop()
            self.log.append(("refund", ctx.action_completed))

    manager = SagaManager(config=SagaConfig(retry_delay_seconds=0, max_retries_per_step=0))
    manager.register(Flaky, factory=lambda: Flaky(log, charge))
    failed = await manager.execute("charge", timeout=WAIT)
    assert failed.status is SagaStatus.FAILED
    redriven = await manager.retry(failed.saga_id)
    assert redriven.steps["charge"].status is SagaStepStatus.FAILED  # its action never did
    assert await manager.recover() == 1
    record = await manager.wait(failed.saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["charge"].status is SagaStepStatus.COMPENSATED
    assert log == [("release", True), ("refund", False)]
    await manager.close()


def test_the_flag_belongs_on_an_action_with_a_compensation() -> None:
    """Misplaced or meaningless flags are definition errors naming the step."""
    with pytest.raises(SagaDefinitionError, match="not its compensation"):
        saga_step("x", compensation=True, compensate_failed=True)
    with pytest.raises(SagaDefinitionError, match="compensate_failed must be a bool"):
        saga_step("x", compensate_failed="yes")  # type: ignore[arg-type]

    class NoUndo(SagaBase):
        name = "no_undo"

        @saga_step("pay", compensate_failed=True)
        async def pay(self, ctx: SagaContext) -> None:
            return None

    with pytest.raises(SagaDefinitionError, match="'pay' has compensate_failed=True but no"):
        SagaManager().register(NoUndo)

    async def act(ctx: SagaContext) -> None:
        return None

    with pytest.raises(SagaDefinitionError, match="'pay' has compensate_failed=True but no"):
        SagaOrchestrator().define("f", [OrchestratedStep("pay", act, compensate_failed=True)])
