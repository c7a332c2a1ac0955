"""Expense approval: a saga that waits for a person, durably, holding no worker meanwhile.

An expense is submitted, then waits for the manager's decision (a *signal*). If none comes
within the reminder time, a reminder goes out and the saga waits again; if still none
comes, the expense is escalated and rejected. An approval reimburses the employee; a
rejection tells them. While it waits, the saga is only a row in the store: no task, no
lease, no memory in any worker. The timeouts here are seconds so that the script runs
quickly; in production they would be days.

Three expenses, on an embedded SQLite store (``demo-data/expenses.db``, or
``$LEXIGRAM_EXAMPLE_DIR/expenses.db``):

- ``exp-1``: parked, its worker shuts down (a restart while parked), a new worker starts
  on the same file, the manager approves: the employee is reimbursed;
- ``exp-2``: no answer in time, a reminder goes out, then the manager rejects it;
- ``exp-3``: nobody ever answers: reminder, then escalation.

Every lifecycle event is printed as it happens. Run it with
``python examples/expense_approval.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lexigram.events import InMemoryEventBus
from lexigram.events.sagas import (
    OrchestratedStep,
    SagaConfig,
    SagaContext,
    SagaEvent,
    SagaOrchestrator,
    SagaRecord,
    SagaStepResult,
    SagaWaiting,
    SQLiteSagaStore,
)

REMIND_AFTER = 1.0  # seconds without a decision before the reminder (days in real life)
ESCALATE_AFTER = 1.0  # seconds after the reminder before escalating

# --------------------------------------------------------------------------- the steps


async def submit(ctx: SagaContext) -> dict[str, Any]:
    print(f"    [{ctx['expense_id']}] submitted: {ctx['amount']} by {ctx['employee']}")
    return {"submitted": True}


async def decide(ctx: SagaContext) -> SagaStepResult:
    decision = ctx.signal or {}
    print(f"    [{ctx['expense_id']}] decision from {decision.get('by')}: {decision.get('ok')}")
    ctx["approved"] = bool(decision.get("ok"))
    return SagaStepResult.Ok({"decided_by": decision.get("by")})


async def remind(ctx: SagaContext) -> None:
    print(f"    [{ctx['expense_id']}] reminder sent to the manager")


async def reimburse(ctx: SagaContext) -> dict[str, Any]:
    print(f"    [{ctx['expense_id']}] reimbursed {ctx['amount']} to {ctx['employee']}")
    return {"paid": ctx["amount"]}


async def take_back(ctx: SagaContext) -> None:
    print(f"    [{ctx['expense_id']}] reimbursement reversed")


async def tell_rejected(ctx: SagaContext) -> None:
    print(f"    [{ctx['expense_id']}] employee told: rejected")


async def escalate(ctx: SagaContext) -> None:
    print(f"    [{ctx['expense_id']}] escalated: no decision, rejected by policy")


def after_decision(ctx: SagaContext) -> str:
    return "reimburse" if ctx["approved"] else "tell_rejected"


def define(orchestrator: SagaOrchestrator) -> None:
    """The expense flow: two waits for the same signal, a reminder between them."""
    orchestrator.define(
        "expense_approval",
        [
            OrchestratedStep("submit", submit, next_step="decide"),
            OrchestratedStep(
                "decide",
                decide,
                next_step=after_decision,
                on_failure="remind",  # the wait timed out: remind, then wait again
                wait_for="manager_decision",
                wait_timeout=REMIND_AFTER,
            ),
            OrchestratedStep("remind", remind, next_step="decide_after_reminder"),
            OrchestratedStep(
                "decide_after_reminder",
                decide,
                next_step=after_decision,
                on_failure="escalate",
                wait_for="manager_decision",
                wait_timeout=ESCALATE_AFTER,
            ),
            OrchestratedStep("reimburse", reimburse, compensation=take_back),
            OrchestratedStep("tell_rejected", tell_rejected),
            OrchestratedStep("escalate", escalate),
        ],
        config=SagaConfig(default_timeout_seconds=60),
    )


# --------------------------------------------------------------------------- the workers


def printer() -> InMemoryEventBus:
    """An event bus that prints every lifecycle event: the saga's transitions."""
    bus = InMemoryEventBus()

    async def show(event: SagaEvent) -> None:
        where = f" {event.step_name}" if event.step_name else ""
        extra = ""
        if isinstance(event, SagaWaiting):
            extra = f" (for {event.kind} {event.signal or ''})".replace(" )", ")")
        print(f"  {event.saga_id}: {event.event_type}{where}{extra}")

    bus.subscribe(SagaEvent, show)
    return bus


@contextlib.asynccontextmanager
async def worker(store: SQLiteSagaStore, name: str) -> AsyncIterator[SagaOrchestrator]:
    """A worker process's orchestrator, serving until the block ends."""
    orchestrator = SagaOrchestrator(store, event_bus=printer(), worker_id=name)
    define(orchestrator)
    stop = asyncio.Event()
    serving = asyncio.create_task(orchestrator.serve(stop=stop, poll_interval=0.05))
    try:
        yield orchestrator
    finally:
        stop.set()
        await serving
        await orchestrator.close()


async def parked(orchestrator: SagaOrchestrator, saga_id: str, step: str) -> SagaRecord:
    """Wait until the saga is stored waiting at ``step`` (and no worker holds it)."""
    while True:
        record = await orchestrator.get(saga_id)
        wait = None if record is None else record.waiting
        if record is not None and wait is not None and wait.step == step and not record.lease_owner:
            return record
        await asyncio.sleep(0.02)


def describe(record: SagaRecord) -> str:
    visited = ", ".join(f"{name}={step.status.value}" for name, step in record.steps.items())
    return f"{record.saga_id}: {record.status.value} [{visited}]"


def fresh_file() -> Path:
    """The example's SQLite file, emptied (each run starts over)."""
    folder = Path(os.environ.get("LEXIGRAM_EXAMPLE_DIR", "demo-data"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "expenses.db"
    for leftover in folder.glob("expenses.db*"):
        leftover.unlink()
    return path


async def main() -> None:
    store = SQLiteSagaStore(fresh_file())
    expenses = {
        "exp-1": {"amount": 120, "employee": "ana"},
        "exp-2": {"amount": 900, "employee": "ben"},
        "exp-3": {"amount": 40, "employee": "cleo"},
    }

    print("== worker-1 starts; three expenses are submitted")
    async with worker(store, "worker-1") as first:
        for expense_id, data in expenses.items():
            await first.enqueue("expense_approval", {"expense_id": expense_id, **data}, expense_id)
        record = await parked(first, "exp-1", "decide")
        wait = record.waiting
        assert wait is not None
        print(f"== exp-1 is parked: waits for '{wait.signal}' until {wait.until:%H:%M:%S}")
        print(f"   sagas waiting now: {[r.saga_id for r in await first.list(waiting=True)]}")
        print("== worker-1 shuts down while the sagas are parked")

    print("== worker-2 starts on the same file; the manager approves exp-1")
    async with worker(store, "worker-2") as second:
        await second.signal("exp-1", "manager_decision", {"ok": True, "by": "maria"})
        await parked(second, "exp-2", "decide_after_reminder")  # reminded, waits again
        await second.signal("exp-2", "manager_decision", {"ok": False, "by": "maria"})
        finals = [await second.wait(expense_id, timeout=30) for expense_id in expenses]

    print("== outcomes")
    for final in finals:
        print("  " + describe(final))
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
