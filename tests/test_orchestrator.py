"""SagaOrchestrator: flow definitions, parallel groups, transitions, failure jumps, resume.

Behaviour shared with the manager (retries, timeouts, cancel, deadline, events...) is
tested once for both front-ends in ``test_frontend_parity.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lexigram.events import InMemoryEventBus
from lexigram.events.sagas._engine.rules import idempotency_key
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import Ok, SagaContext, SagaStepResult
from lexigram.events.sagas.errors import SagaDefinitionError, SagaNotFoundError
from lexigram.events.sagas.events import SagaStepFailed
from lexigram.events.sagas.orchestrator import (
    ConditionalTransition,
    OrchestratedStep,
    SagaAction,
    SagaOrchestrator,
    transition,
)
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.testing import FaultyStore, SimulatedCrash
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepStatus

FAST = SagaConfig(retry_delay_seconds=0)
WAIT = 5.0  # a safety net against hangs, never reached when the test passes

StepFn = Callable[[SagaContext], Awaitable[object]]


class Journal:
    """Records what steps and compensations did, in order."""

    def __init__(self) -> None:
        self.entries: list[str] = []

    def action(
        self, name: str, output: dict[str, Any] | None = None, *, before: StepFn | None = None
    ) -> Booking:
        """A SagaAction that logs ``name`` and ``undo name``; ``before`` runs first."""
        return Booking(self, name, output if output is not None else {name: True}, before)


class Booking:
    """A SagaAction writing to a journal."""

    def __init__(
        self, journal: Journal, name: str, output: dict[str, Any], before: StepFn | None
    ) -> None:
        self.journal = journal
        self.name = name
        self.output = output
        self.before = before

    async def execute(self, ctx: SagaContext) -> object:
        self.journal.entries.append(self.name)
        if self.before is not None:
            result = await self.before(ctx)
            if result is not None:
                return result
        self.journal.entries.append(f"{self.name} done")
        return self.output

    async def compensate(self, ctx: SagaContext) -> object:
        self.journal.entries.append(f"undo {self.name}")
        return None


@pytest.fixture
async def orchestrator() -> AsyncIterator[SagaOrchestrator]:
    runtime = SagaOrchestrator(config=FAST)
    yield runtime
    await runtime.close()


@pytest.fixture
def journal() -> Journal:
    return Journal()


async def run(orchestrator: SagaOrchestrator, name: str, data: dict[str, Any]) -> SagaRecord:
    return await orchestrator.execute(name, data, timeout=WAIT)


# --------------------------------------------------------------------------- basics


async def test_plain_callables_and_saga_actions_both_run(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A plain async function and a SagaAction are both valid actions."""

    async def confirm(ctx: SagaContext) -> Ok[int]:
        return Ok(ctx["order"])

    orchestrator.define(
        "mixed",
        [
            OrchestratedStep("reserve", action=journal.action("reserve"), next_step="confirm"),
            OrchestratedStep("confirm", action=confirm),
        ],
    )
    record = await run(orchestrator, "mixed", {"order": 7})
    assert record.status is SagaStatus.COMPLETED
    assert record.steps["confirm"].output == {"value": 7}


def test_saga_action_is_a_runtime_checkable_protocol(journal: Journal) -> None:
    """An object with async execute and compensate is a SagaAction."""
    assert isinstance(journal.action("x"), SagaAction)
    assert not isinstance(object(), SagaAction)


async def test_explicit_compensation_undoes_a_plain_callable(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """``compensation=`` gives a plain-callable step an undo action."""

    async def charge(ctx: SagaContext) -> None:
        journal.entries.append("charge")

    async def refund(ctx: SagaContext) -> None:
        journal.entries.append(f"refund {ctx.idempotency_key}")

    async def ship(ctx: SagaContext) -> SagaStepResult:
        return SagaStepResult.fail("no courier")

    orchestrator.define(
        "pay",
        [
            OrchestratedStep("charge", action=charge, compensation=refund, next_step="ship"),
            OrchestratedStep("ship", action=ship),
        ],
    )
    record = await orchestrator.execute("pay", saga_id="p-1", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    undo_key = idempotency_key("p-1", "charge", 1, compensation=True)
    assert journal.entries == ["charge", f"refund {undo_key}"]


async def test_entry_is_the_first_step(orchestrator: SagaOrchestrator, journal: Journal) -> None:
    """The first step listed runs first, whatever the others' order in the flow."""
    orchestrator.define(
        "order",
        [
            OrchestratedStep("b", action=journal.action("b"), next_step="a"),
            OrchestratedStep("a", action=journal.action("a")),
        ],
    )
    await run(orchestrator, "order", {})
    assert journal.entries == ["b", "b done", "a", "a done"]


# --------------------------------------------------------------------------- parallel groups


async def test_parallel_children_overlap_in_time(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """Each child waits at a barrier the other children must reach: they run together."""
    barrier = asyncio.Barrier(3)

    async def meet(ctx: SagaContext) -> None:
        await barrier.wait()

    children = [OrchestratedStep(n, action=journal.action(n, before=meet)) for n in "xyz"]
    orchestrator.define("overlap", [OrchestratedStep("group", parallel=children)])
    record = await run(orchestrator, "overlap", {})
    assert record.status is SagaStatus.COMPLETED
    assert journal.entries[:3] == ["x", "y", "z"]  # all three entered before any finished


async def test_outputs_merge_in_list_order_not_completion_order(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A later child's keys win, even when it completed first."""
    second_done = asyncio.Event()

    async def after_second(ctx: SagaContext) -> None:
        await second_done.wait()

    async def signal(ctx: SagaContext) -> None:
        second_done.set()

    orchestrator.define(
        "merge",
        [
            OrchestratedStep(
                "group",
                parallel=[
                    OrchestratedStep(
                        "first",
                        action=journal.action("first", {"k": 1, "a": 1}, before=after_second),
                    ),
                    OrchestratedStep(
                        "second", action=journal.action("second", {"k": 2, "b": 2}, before=signal)
                    ),
                ],
                next_step="read",
            ),
            OrchestratedStep("read", action=journal.action("read")),
        ],
    )
    record = await run(orchestrator, "merge", {})
    assert journal.entries.index("second done") < journal.entries.index("first done")
    assert record.steps["group"].output == {"k": 2, "a": 1, "b": 2}
    assert list(record.steps["group"].output) == ["k", "a", "b"]
    assert record.steps["second"].output == {"k": 2, "b": 2}


async def test_failed_child_compensates_completed_siblings_in_reverse_order(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A running sibling finishes; then completed children and earlier steps are undone."""
    failing = asyncio.Event()

    async def fail(ctx: SagaContext) -> SagaStepResult:
        failing.set()
        return SagaStepResult.fail("no rooms")

    async def slow(ctx: SagaContext) -> None:
        await failing.wait()  # still running when its sibling fails

    orchestrator.define(
        "trip",
        [
            OrchestratedStep("prepare", action=journal.action("prepare"), next_step="book"),
            OrchestratedStep(
                "book",
                parallel=[
                    OrchestratedStep("fast", action=journal.action("fast")),
                    OrchestratedStep("broken", action=journal.action("broken", before=fail)),
                    OrchestratedStep("slow", action=journal.action("slow", before=slow)),
                ],
                next_step="after",
            ),
            OrchestratedStep("after", action=journal.action("after")),
        ],
    )
    record = await run(orchestrator, "trip", {})
    assert record.status is SagaStatus.COMPENSATED
    undo = [entry for entry in journal.entries if entry.startswith("undo")]
    assert undo == ["undo slow", "undo fast", "undo prepare"]
    assert journal.entries.index("slow done") < journal.entries.index("undo slow")
    assert "after" not in journal.entries
    assert record.steps["broken"].status is SagaStepStatus.FAILED
    assert record.steps["book"].status is SagaStepStatus.FAILED
    assert "broken" in (record.error or "")


async def test_cancel_mid_group_stops_running_children_and_compensates(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """Cancelling stops the children still running and undoes the completed ones."""
    blocked = asyncio.Event()

    async def block(ctx: SagaContext) -> None:
        blocked.set()
        await asyncio.Event().wait()

    orchestrator.define(
        "cancelled",
        [
            OrchestratedStep(
                "group",
                parallel=[
                    OrchestratedStep("done", action=journal.action("done")),
                    OrchestratedStep("stuck", action=journal.action("stuck", before=block)),
                ],
            )
        ],
    )
    saga_id = await orchestrator.start("cancelled")
    await blocked.wait()
    record = await orchestrator.cancel(saga_id, reason="trip called off")
    assert record.status is SagaStatus.COMPENSATED
    assert "trip called off" in (record.error or "")
    assert record.steps["stuck"].status is SagaStepStatus.FAILED
    assert record.steps["done"].status is SagaStepStatus.COMPENSATED
    assert "undo stuck" not in journal.entries


async def test_each_child_retries_on_its_own(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A child's transient failure retries that child only, with its own attempt count."""
    failures = [ConnectionError("flaky"), ConnectionError("flaky")]

    async def flaky(ctx: SagaContext) -> None:
        if failures:
            raise failures.pop()

    orchestrator.define(
        "retry",
        [
            OrchestratedStep(
                "group",
                parallel=[
                    OrchestratedStep("steady", action=journal.action("steady")),
                    OrchestratedStep("flaky", action=journal.action("flaky", before=flaky)),
                ],
            )
        ],
    )
    record = await run(orchestrator, "retry", {})
    assert record.status is SagaStatus.COMPLETED
    assert record.steps["flaky"].attempts == 3
    assert record.steps["steady"].attempts == 1


async def test_nested_groups_run_and_merge(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A group inside a group runs its children concurrently too; outputs merge upward."""
    barrier = asyncio.Barrier(3)

    async def meet(ctx: SagaContext) -> None:
        await barrier.wait()

    orchestrator.define(
        "nested",
        [
            OrchestratedStep(
                "outer",
                parallel=[
                    OrchestratedStep("x", action=journal.action("x", before=meet)),
                    OrchestratedStep(
                        "inner",
                        parallel=[
                            OrchestratedStep("y", action=journal.action("y", before=meet)),
                            OrchestratedStep("z", action=journal.action("z", before=meet)),
                        ],
                    ),
                ],
            )
        ],
    )
    record = await run(orchestrator, "nested", {})
    assert record.status is SagaStatus.COMPLETED
    assert record.steps["inner"].output == {"y": True, "z": True}
    assert record.steps["outer"].output == {"x": True, "y": True, "z": True}
    assert record.steps["y"].parent == "inner"


async def test_failure_in_a_nested_group_compensates_every_completed_step(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A nested child's failure undoes its sibling, the outer sibling and earlier steps."""
    ready = asyncio.Barrier(2)

    async def wait_for_x(ctx: SagaContext) -> None:
        await ready.wait()

    async def fail_after_x(ctx: SagaContext) -> SagaStepResult:
        await ready.wait()
        return SagaStepResult.fail("declined")

    orchestrator.define(
        "nested-failure",
        [
            OrchestratedStep("first", action=journal.action("first"), next_step="outer"),
            OrchestratedStep(
                "outer",
                parallel=[
                    OrchestratedStep("x", action=journal.action("x", before=wait_for_x)),
                    OrchestratedStep(
                        "inner",
                        parallel=[
                            OrchestratedStep("y", action=journal.action("y")),
                            OrchestratedStep("z", action=journal.action("z", before=fail_after_x)),
                        ],
                    ),
                ],
            ),
        ],
    )
    record = await run(orchestrator, "nested-failure", {})
    assert record.status is SagaStatus.COMPENSATED
    undone = {entry for entry in journal.entries if entry.startswith("undo")}
    assert undone == {"undo first", "undo x", "undo y"}
    assert journal.entries[-1] == "undo first"
    assert record.steps["inner"].status is SagaStepStatus.FAILED


# --------------------------------------------------------------------------- transitions


async def test_conditional_transition_picks_the_branch_from_the_context(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """The next step is chosen by a function of the context."""

    @transition("approve", "confirm")
    def route(ctx: SagaContext) -> str:
        return "approve" if ctx["amount"] > 100 else "confirm"

    orchestrator.define(
        "branch",
        [
            OrchestratedStep("quote", action=journal.action("quote"), next_step=route),
            OrchestratedStep("approve", action=journal.action("approve"), next_step="confirm"),
            OrchestratedStep("confirm", action=journal.action("confirm")),
        ],
    )
    small = await run(orchestrator, "branch", {"amount": 50})
    big = await run(orchestrator, "branch", {"amount": 500})
    assert list(small.steps) == ["quote", "confirm"]
    assert list(big.steps) == ["quote", "approve", "confirm"]
    assert small.status is big.status is SagaStatus.COMPLETED


async def test_plain_function_transition_may_end_the_flow(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """An undeclared transition function returning None ends the flow."""

    def stop_if_done(ctx: SagaContext) -> str | None:
        return None if ctx.step_results["check"]["done"] else "work"

    orchestrator.define(
        "maybe",
        [
            OrchestratedStep(
                "check", action=journal.action("check", {"done": True}), next_step=stop_if_done
            ),
            OrchestratedStep("work", action=journal.action("work")),
        ],
    )
    record = await run(orchestrator, "maybe", {})
    assert record.status is SagaStatus.COMPLETED
    assert list(record.steps) == ["check"]


async def test_transition_to_an_unknown_step_fails_the_saga_naming_it(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A transition returning a name the flow does not have fails the saga, naming it."""
    orchestrator.define(
        "lost",
        [
            OrchestratedStep(
                "start", action=journal.action("start"), next_step=lambda ctx: "nowhere"
            ),
            OrchestratedStep("end", action=journal.action("end")),
        ],
    )
    record = await run(orchestrator, "lost", {})
    assert record.status is SagaStatus.COMPENSATED
    assert "'nowhere'" in (record.error or "")
    assert "'start'" in (record.error or "")
    assert "end" not in journal.entries


async def test_declared_transition_returning_an_undeclared_step_fails(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A ``transition()`` function may only choose the targets it declared."""

    @transition("a")
    def route(ctx: SagaContext) -> str:
        return "b"

    orchestrator.define(
        "strict",
        [
            OrchestratedStep("start", action=journal.action("start"), next_step=route),
            OrchestratedStep("a", action=journal.action("a")),
            OrchestratedStep("b", action=journal.action("b")),
        ],
    )
    record = await run(orchestrator, "strict", {})
    assert record.status is SagaStatus.COMPENSATED
    assert "'b'" in (record.error or "")
    assert "b" not in journal.entries


async def test_on_failure_jumps_without_compensating_and_can_complete(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A failed step with ``on_failure`` leads to that step; the saga may end COMPLETED."""

    async def decline(ctx: SagaContext) -> SagaStepResult:
        return SagaStepResult.fail("card declined")

    orchestrator.define(
        "fallback",
        [
            OrchestratedStep("reserve", action=journal.action("reserve"), next_step="charge"),
            OrchestratedStep(
                "charge",
                action=journal.action("charge", before=decline),
                next_step="ship",
                on_failure="invoice",
            ),
            OrchestratedStep("ship", action=journal.action("ship")),
            OrchestratedStep("invoice", action=journal.action("invoice")),
        ],
    )
    record = await run(orchestrator, "fallback", {})
    assert record.status is SagaStatus.COMPLETED
    assert record.steps["charge"].status is SagaStepStatus.FAILED
    assert record.steps["reserve"].status is SagaStepStatus.COMPLETED
    assert not [entry for entry in journal.entries if entry.startswith("undo")]
    assert "ship" not in journal.entries
    assert "invoice done" in journal.entries


async def test_on_failure_of_a_group_jumps_after_siblings_finish(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A group's ``on_failure`` leaves its completed children as they are."""

    async def decline(ctx: SagaContext) -> SagaStepResult:
        return SagaStepResult.fail("sold out")

    orchestrator.define(
        "group-fallback",
        [
            OrchestratedStep(
                "book",
                parallel=[
                    OrchestratedStep("ok", action=journal.action("ok")),
                    OrchestratedStep("bad", action=journal.action("bad", before=decline)),
                ],
                on_failure="waitlist",
            ),
            OrchestratedStep("waitlist", action=journal.action("waitlist")),
        ],
    )
    record = await run(orchestrator, "group-fallback", {})
    assert record.status is SagaStatus.COMPLETED
    assert record.steps["ok"].status is SagaStepStatus.COMPLETED
    assert "waitlist done" in journal.entries


async def test_a_cycle_ends_when_its_condition_says_so(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """A step may lead back to itself; each visit gets its own idempotency key."""
    keys: list[str | None] = []

    async def poll(ctx: SagaContext) -> None:
        keys.append(ctx.idempotency_key)
        ctx["polls"] = ctx.get("polls", 0) + 1

    def again(ctx: SagaContext) -> str | None:
        return "poll" if ctx["polls"] < 3 else None

    orchestrator.define("poller", [OrchestratedStep("poll", action=poll, next_step=again)])
    record = await orchestrator.execute("poller", saga_id="c-1", timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert record.data["polls"] == 3
    assert record.steps["poll"].visits == 3
    assert keys == [idempotency_key("c-1", "poll", n, compensation=False) for n in (1, 2, 3)]
    assert len(set(keys)) == 3


async def test_a_cycle_stops_at_max_transitions(journal: Journal) -> None:
    """An endless cycle is stopped by ``SagaConfig.max_transitions`` with an error."""
    runs = 0

    async def spin(ctx: SagaContext) -> None:
        nonlocal runs
        runs += 1

    async with SagaOrchestrator(config=SagaConfig(max_transitions=5)) as orchestrator:
        orchestrator.define("spin", [OrchestratedStep("spin", action=spin, next_step="spin")])
        record = await orchestrator.execute("spin", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert "max_transitions (5)" in (record.error or "")
    assert runs == 5


async def test_step_whose_transition_fails_is_still_compensated(
    orchestrator: SagaOrchestrator, journal: Journal
) -> None:
    """The action ran and succeeded, so a failing transition after it must undo it."""
    orchestrator.define(
        "undo-me",
        [
            OrchestratedStep("charge", action=journal.action("charge"), next_step=lambda c: "x"),
            OrchestratedStep("ship", action=journal.action("ship")),
        ],
    )
    await run(orchestrator, "undo-me", {})
    assert "undo charge" in journal.entries


async def test_exceeding_max_transitions_compensates_the_completed_visit(
    journal: Journal,
) -> None:
    """The step about to be re-entered never ran again; its completed visit is undone."""
    async with SagaOrchestrator(config=SagaConfig(max_transitions=4)) as orchestrator:
        orchestrator.define(
            "ping-pong",
            [
                OrchestratedStep("a", action=journal.action("a"), next_step="b"),
                OrchestratedStep("b", action=journal.action("b"), next_step="a"),
            ],
        )
        await orchestrator.execute("ping-pong", timeout=WAIT)
    assert [e for e in journal.entries if e.startswith("undo")] == ["undo b", "undo a"]


# --------------------------------------------------------------------------- resume


def _resumable_flow(journal: Journal, gate: asyncio.Event | None) -> list[OrchestratedStep]:
    async def hold(ctx: SagaContext) -> None:
        if gate is not None:
            await gate.wait()

    return [
        OrchestratedStep("first", action=journal.action("first"), next_step="group"),
        OrchestratedStep(
            "group",
            parallel=[
                OrchestratedStep("quick", action=journal.action("quick")),
                OrchestratedStep("held", action=journal.action("held", before=hold)),
            ],
            next_step="last",
        ),
        OrchestratedStep("last", action=journal.action("last")),
    ]


async def test_crash_mid_group_resumes_only_unfinished_children(journal: Journal) -> None:
    """After a crash following one child's completion write, only the other child re-runs."""
    store = InMemorySagaStore()
    # Writes: 1 start, 2 'first' completed, 3 'quick' completed -> crash.
    crashing = SagaOrchestrator(FaultyStore(store, crash_after_write=3), worker_id="w", config=FAST)
    crashing.define("resumable", _resumable_flow(journal, asyncio.Event()))
    saga_id = await crashing.start("resumable", saga_id="r-1")
    # Await the dead run's task (named by the engine) so its crash is observed, not logged.
    task = next(t for t in asyncio.all_tasks() if t.get_name() == f"saga:{saga_id}")
    with pytest.raises(BaseExceptionGroup) as crash:
        await task
    assert crash.group_contains(SimulatedCrash)
    stored = await store.load(saga_id)
    assert stored is not None
    assert stored.steps["quick"].status is SagaStepStatus.COMPLETED
    assert "held" not in stored.steps or stored.steps["held"].status is SagaStepStatus.RUNNING

    journal.entries.clear()
    async with SagaOrchestrator(store, worker_id="w", config=FAST) as restarted:
        restarted.define("resumable", _resumable_flow(journal, None))
        assert await restarted.recover() == 1
        record = await restarted.wait(saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert journal.entries == ["held", "held done", "last", "last done"]
    assert record.steps["group"].output == {"quick": True, "held": True}


async def test_shutdown_mid_group_resumes_only_unfinished_children(journal: Journal) -> None:
    """A worker closed while a child runs leaves the saga resumable from that child."""
    store = InMemorySagaStore()
    held = asyncio.Event()

    async def hold(ctx: SagaContext) -> None:
        held.set()
        await asyncio.Event().wait()

    steps = _resumable_flow(journal, None)
    stuck = OrchestratedStep("held", action=journal.action("held", before=hold))
    group = steps[1]
    steps[1] = OrchestratedStep(
        "group", parallel=[group.parallel[0], stuck], next_step=group.next_step
    )
    first = SagaOrchestrator(store, config=SagaConfig(retry_delay_seconds=0, shutdown_timeout=0))
    first.define("resumable", steps)
    saga_id = await first.start("resumable")
    await held.wait()
    await first.close()
    stored = await store.load(saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.RUNNING
    assert stored.lease_owner is None

    journal.entries.clear()
    async with SagaOrchestrator(store, config=FAST) as second:
        second.define("resumable", _resumable_flow(journal, None))
        await second.resume(saga_id)
        record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert journal.entries == ["held", "held done", "last", "last done"]


# --------------------------------------------------------------------------- definitions


async def _noop(ctx: SagaContext) -> None:
    return None


def _sync_step(ctx: SagaContext) -> None:
    return None


class _SyncAction:
    def execute(self, ctx: SagaContext) -> None:
        return None

    async def compensate(self, ctx: SagaContext) -> None:
        return None


def _step(name: str, **kwargs: Any) -> OrchestratedStep:
    kwargs.setdefault("action", _noop)
    return OrchestratedStep(name, **kwargs)


def _group(name: str, *children: OrchestratedStep, **kwargs: Any) -> OrchestratedStep:
    return OrchestratedStep(name, parallel=list(children), **kwargs)


@pytest.mark.parametrize(
    ("steps", "bad_step", "words"),
    [
        pytest.param([_step("a"), _step("a")], "a", "twice", id="duplicate"),
        pytest.param([_step("a"), _group("g", _step("a"))], "a", "twice", id="duplicate-child"),
        pytest.param([_step("a", next_step="zz")], "a", "'zz'", id="unknown-next"),
        pytest.param([_step("a", on_failure="zz")], "a", "'zz'", id="unknown-on-failure"),
        pytest.param(
            [_step("a", next_step="c"), _group("g", _step("c"))], "a", "'c'", id="next-is-a-child"
        ),
        pytest.param(
            [OrchestratedStep("g", action=_noop, parallel=[_step("c")])],
            "g",
            "action",
            id="action-and-parallel",
        ),
        pytest.param([OrchestratedStep("a")], "a", "neither", id="no-action"),
        pytest.param(
            [_group("g", _step("c", next_step="g"))], "c", "next_step", id="child-next-step"
        ),
        pytest.param(
            [_group("g", _step("c", on_failure="g"))], "c", "on_failure", id="child-on-failure"
        ),
        pytest.param([_step("a", action=_sync_step)], "a", "async def", id="sync-action"),
        pytest.param(
            [_step("a", compensation=_sync_step)], "a", "async def", id="sync-compensation"
        ),
        pytest.param([_step("a", action=_SyncAction())], "a", "async def", id="sync-saga-action"),
        pytest.param([_step("a", action=_SyncAction)], "a", "instance", id="class-not-instance"),
        pytest.param(
            [_step("a", action=Booking(Journal(), "a", {}, None), compensation=_noop)],
            "a",
            "compensat",
            id="saga-action-and-compensation",
        ),
        pytest.param([_group("g", _step("c"), timeout=1.0)], "g", "children", id="group-timeout"),
        pytest.param([_step("a", max_retries=-1)], "a", "max_retries", id="negative-retries"),
        pytest.param([_step("a", timeout=0)], "a", "timeout", id="zero-timeout"),
        pytest.param(
            [_step("a", next_step=transition("zz")(lambda ctx: "zz"))],
            "a",
            "'zz'",
            id="undeclared-target",
        ),
    ],
)
def test_invalid_definition_names_the_step(
    steps: list[OrchestratedStep], bad_step: str, words: str
) -> None:
    """Each broken rule raises SagaDefinitionError naming the saga and the step."""
    orchestrator = SagaOrchestrator()
    with pytest.raises(SagaDefinitionError) as caught:
        orchestrator.define("broken", steps)
    assert caught.value.step_name == bad_step
    assert caught.value.saga_name == "broken"
    assert f"'{bad_step}'" in str(caught.value)
    assert words in str(caught.value)
    assert orchestrator.registered == ()


@pytest.mark.parametrize("steps", [[], ()], ids=["list", "tuple"])
def test_empty_definition_is_rejected(steps: list[OrchestratedStep]) -> None:
    """A flow without steps is a SagaDefinitionError naming the saga."""
    with pytest.raises(SagaDefinitionError, match="'empty' has no steps") as caught:
        SagaOrchestrator().define("empty", steps)
    assert caught.value.saga_name == "empty"


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_saga_name_is_rejected(name: str) -> None:
    """The saga name must be set."""
    with pytest.raises(SagaDefinitionError, match="must be set"):
        SagaOrchestrator().define(name, [_step("a")])


def test_empty_step_name_is_rejected() -> None:
    """Every step needs a name."""
    with pytest.raises(SagaDefinitionError, match="non-empty name"):
        SagaOrchestrator().define("s", [_step("")])


def test_non_step_in_definition_is_rejected() -> None:
    """Only OrchestratedStep objects make a flow."""
    bogus: Any = ["a"]
    with pytest.raises(SagaDefinitionError, match="expected an OrchestratedStep"):
        SagaOrchestrator().define("s", bogus)


def test_parallel_must_be_a_list_of_steps() -> None:
    """``parallel`` given as a string is rejected when the step is built."""
    bogus: Any = "abc"
    with pytest.raises(SagaDefinitionError, match="parallel must be a list"):
        OrchestratedStep("g", parallel=bogus)


def test_transition_needs_targets() -> None:
    """``transition()`` without targets is an error."""
    with pytest.raises(SagaDefinitionError, match="at least one target"):
        transition()


def test_step_is_immutable_and_parallel_a_tuple() -> None:
    """A step keeps its children as a tuple, so it is hashable and frozen."""
    step = _group("g", _step("a"))
    assert isinstance(step.parallel, tuple)
    assert hash(step) == hash(_group("g", _step("a")))


def test_defining_the_same_steps_twice_is_a_no_op() -> None:
    """Redefining a name with equal steps returns the flow already registered."""
    orchestrator = SagaOrchestrator()
    first = orchestrator.define("same", [_step("a")])
    assert orchestrator.define("same", [_step("a")]) is first


def test_defining_a_different_flow_under_a_taken_name_fails() -> None:
    """A name can only hold one definition."""
    orchestrator = SagaOrchestrator()
    orchestrator.define("taken", [_step("a")])
    with pytest.raises(SagaDefinitionError, match="already registered") as caught:
        orchestrator.define("taken", [_step("b")])
    assert caught.value.saga_name == "taken"


def test_compiled_flow_lists_groups_before_their_children() -> None:
    """The compiled graph keeps definition order, children after their group."""
    flow = SagaOrchestrator().define(
        "order", [_step("a", next_step="g"), _group("g", _step("c1"), _step("c2")), _step("z")]
    )
    assert list(flow.steps) == ["a", "g", "c1", "c2", "z"]
    assert flow.entry == "a"
    assert flow.linear is None
    assert flow.steps["c1"].parent == "g"
    assert isinstance(flow.steps["a"].next, str)


def test_transition_decorator_keeps_the_function_name() -> None:
    """A declared transition is callable and reports its targets and name."""

    @transition("a", None)
    def route(ctx: SagaContext) -> str | None:
        return None

    assert isinstance(route, ConditionalTransition)
    assert route.targets == ("a", None)
    assert route.__name__ == "route"
    assert route(SagaContext("id", "s")) is None


async def test_start_of_an_undefined_name_fails(orchestrator: SagaOrchestrator) -> None:
    """The common API reports unknown names as on the manager."""
    with pytest.raises(SagaNotFoundError, match="No saga registered with name 'nope'"):
        await orchestrator.start("nope")


# --------------------------------------------------------------------------- what children store


async def test_a_childs_unstorable_output_fails_that_child_only() -> None:
    """A child returning an output no store can hold fails; siblings keep their outcome."""
    calls: list[str] = []

    async def flaky(ctx: SagaContext) -> object:
        calls.append(f"flaky:{ctx.attempt}")
        await asyncio.sleep(0.01)
        if ctx.attempt == 1:
            raise ConnectionError("transient")
        return {"flaky": 1}

    async def good(ctx: SagaContext) -> object:
        return {"good": 1}

    async def bad(ctx: SagaContext) -> object:
        await asyncio.sleep(0.005)
        return {"bad": {1, 2}}

    async def undo(ctx: SagaContext) -> None:
        calls.append(f"undo {ctx.step_name}")

    orchestrator = SagaOrchestrator(config=FAST)
    children = [
        OrchestratedStep(name, action=action, compensation=undo)
        for name, action in (("flaky", flaky), ("good", good), ("bad", bad))
    ]
    orchestrator.define("group", [OrchestratedStep("g", parallel=children)])
    record = await run(orchestrator, "group", {})
    await orchestrator.close()
    steps = record.steps
    assert steps["bad"].status is SagaStepStatus.FAILED
    assert "returned an output no store can hold" in (steps["bad"].error or "")
    assert steps["flaky"].status is SagaStepStatus.COMPENSATED  # retried, completed, undone
    assert steps["good"].status is SagaStepStatus.COMPENSATED
    assert calls.count("flaky:2") == 1
    assert "undo bad" not in calls


async def test_a_child_may_not_replace_the_shared_context() -> None:
    """``ctx.data = {...}`` in a parallel child fails that child; nothing is silently lost."""

    async def replace(ctx: SagaContext) -> None:
        ctx.data = {"replaced": True}

    async def fine(ctx: SagaContext) -> None:
        ctx["fine"] = True

    orchestrator = SagaOrchestrator(config=FAST)
    orchestrator.define(
        "group",
        [
            OrchestratedStep(
                "g",
                parallel=[
                    OrchestratedStep("replace", action=replace),
                    OrchestratedStep("fine", action=fine),
                ],
            )
        ],
    )
    record = await run(orchestrator, "group", {"orig": 1})
    await orchestrator.close()
    assert record.status is SagaStatus.COMPENSATED
    assert "replaced ctx.data" in (record.steps["replace"].error or "")
    assert record.data["orig"] == 1
    assert "replaced" not in record.data


async def test_group_events_follow_their_writes(tmp_path: Path) -> None:
    """In a parallel group, ``SagaStepFailed`` arrives only once the failure is stored."""

    async def slow_ok(ctx: SagaContext) -> object:
        await asyncio.sleep(0.001)
        return {"ok": 1}

    async def fail_later(ctx: SagaContext) -> object:
        await asyncio.sleep(0.002)
        raise ValueError("no")

    store = SQLiteSagaStore(tmp_path / "s.db")
    bus = InMemoryEventBus()
    seen: list[str | None] = []

    async def on_failed(event: SagaStepFailed) -> None:
        stored = await store.load(event.saga_id)
        assert stored is not None
        step = stored.steps.get(event.step_name or "")
        seen.append(None if step is None else step.status.value)

    bus.subscribe(SagaStepFailed, on_failed)
    orchestrator = SagaOrchestrator(store, config=FAST, event_bus=bus)
    children = [OrchestratedStep(f"ok{i}", action=slow_ok) for i in range(8)]
    children.append(OrchestratedStep("bad", action=fail_later))
    orchestrator.define("p", [OrchestratedStep("g", parallel=children)])
    for _ in range(10):
        await run(orchestrator, "p", {})
    await orchestrator.close()
    await store.close()
    assert seen == ["failed"] * 10
