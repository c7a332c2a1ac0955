"""A small application for the ``lexigram-sagas`` tests: ``--app tests.support.cli_app:...``.

- ``manager``: a ready-made ``SagaManager`` (in-memory store) with ``order`` and
  ``expense`` registered;
- ``make_manager(store=None)``: a factory building the same manager on the given store;
- ``orchestrator``: a ``SagaOrchestrator`` with the branching flow ``refund``;
- ``not_a_manager``: a string, for the wrong-type error.

The ``order`` saga's data steers it: ``fail_at="charge"`` makes ``charge`` fail (the saga
compensates), ``undo_fails=True`` makes the compensation of ``reserve`` fail as well (the
saga ends ``FAILED``), ``hold=<seconds>`` keeps ``ship`` running that long.
"""

from __future__ import annotations

import asyncio

from lexigram.events.sagas import (
    NonRetryableError,
    OrchestratedStep,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaManager,
    SagaOrchestrator,
    SagaStepResult,
    SagaStore,
    saga_step,
    transition,
)

CONFIG = SagaConfig(max_retries_per_step=0, retry_delay_seconds=0, shutdown_timeout=2)
"""No retries and no delays: the tests' sagas end at once."""


class OrderSaga(SagaBase):
    """Reserve, charge, ship; every failure is steered by the saga's data."""

    name = "order"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        ctx["reserved"] = True

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        if ctx.get("undo_fails"):
            raise RuntimeError("inventory service unreachable")

    @saga_step("charge", max_retries=0)
    async def charge(self, ctx: SagaContext) -> None:
        if ctx.get("fail_at") == "charge":
            raise NonRetryableError("card declined")

    @saga_step("charge", compensation=True)
    async def refund(self, ctx: SagaContext) -> None:
        ctx["refunded"] = True

    @saga_step("ship")
    async def ship(self, ctx: SagaContext) -> None:
        await asyncio.sleep(float(ctx.get("hold", 0)))


class ExpenseSaga(SagaBase):
    """Submit, wait for the signal ``approval``, then pay."""

    name = "expense"

    @saga_step("submit")
    async def submit(self, ctx: SagaContext) -> None:
        ctx["submitted"] = True

    @saga_step("approve", wait_for="approval", wait_timeout=86400)
    async def approve(self, ctx: SagaContext) -> SagaStepResult:
        decision = ctx.signal or {}
        if not decision.get("ok"):
            return SagaStepResult.fail(f"rejected by {decision.get('by', 'nobody')}")
        return SagaStepResult.Ok({"approved_by": decision.get("by")})

    @saga_step("pay")
    async def pay(self, ctx: SagaContext) -> None:
        ctx["paid"] = True


def make_manager(store: SagaStore | None = None, config: SagaConfig = CONFIG) -> SagaManager:
    """The application's manager, built on ``store``."""
    built = SagaManager(store, config=config)
    built.register(OrderSaga)
    built.register(ExpenseSaga)
    return built


manager = make_manager()


async def _check(ctx: SagaContext) -> None:
    ctx["checked"] = True


async def _pay_back(ctx: SagaContext) -> None:
    ctx["paid_back"] = True


async def _escalate(ctx: SagaContext) -> None:
    ctx["escalated"] = True


@transition("pay_back", "escalate")
def _route(ctx: SagaContext) -> str:
    return "pay_back" if ctx.get("amount", 0) < 100 else "escalate"


orchestrator = SagaOrchestrator(config=CONFIG)
orchestrator.define(
    "refund",
    [
        OrchestratedStep("check", _check, next_step=_route),
        OrchestratedStep("pay_back", _pay_back),
        OrchestratedStep("escalate", _escalate),
    ],
)

not_a_manager = "not a saga manager"
