"""Mermaid diagrams of saga definitions (both front-ends) and of saga instances."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.diagram import instance_to_mermaid, to_mermaid
from lexigram.events.sagas.errors import SagaDefinitionError
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.orchestrator import OrchestratedStep, SagaOrchestrator, transition
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepRecord, SagaStepStatus


class OrderSaga(SagaBase):
    name = "orders"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        return None

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        return None

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> SagaStepResult:
        if ctx.get("decline"):
            return SagaStepResult.fail("declined")
        return SagaStepResult.Ok({"receipt": ctx.get("secret", "r")})

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> None:
        return None


async def noop(ctx: SagaContext) -> None:
    return None


async def undo_flight(ctx: SagaContext) -> None:
    return None


async def decline(ctx: SagaContext) -> SagaStepResult:
    return SagaStepResult.fail("no cars")


@transition("approval", "ticket")
def route_on_price(ctx: SagaContext) -> str:
    return "approval" if ctx.get("total", 0) > 100 else "ticket"


def pick_anything(ctx: SagaContext) -> str | None:
    return None


def travel_steps(*, car_fails: bool = False) -> list[OrchestratedStep]:
    return [
        OrchestratedStep(
            "book",
            parallel=[
                OrchestratedStep("flight", action=noop, compensation=undo_flight),
                OrchestratedStep("hotel", action=noop),
                OrchestratedStep(
                    "extras",
                    parallel=[OrchestratedStep("car", action=decline if car_fails else noop)],
                ),
            ],
            next_step=route_on_price,
        ),
        OrchestratedStep("approval", action=noop, next_step="ticket", on_failure="apology"),
        OrchestratedStep("ticket", action=noop, next_step=pick_anything),
        OrchestratedStep("apology", action=noop),
    ]


@pytest.fixture
async def orchestrator() -> AsyncIterator[SagaOrchestrator]:
    runtime = SagaOrchestrator(config=SagaConfig(retry_delay_seconds=0))
    yield runtime
    await runtime.close()


@pytest.fixture
def travel(orchestrator: SagaOrchestrator) -> Flow:
    return orchestrator.define("travel", travel_steps())


def node_id(text: str, label: str) -> str:
    """The id of the node whose label starts with ``label``."""
    match = re.search(rf'^\s*(\w+)\["{re.escape(label)}(?:<br/>[^"]*)?"\]$', text, re.MULTILINE)
    assert match is not None, f"no node labelled {label!r} in:\n{text}"
    return match.group(1)


def edges(text: str) -> list[str]:
    """Every edge statement, stripped, in declaration order (Mermaid numbers them so)."""
    return [line.strip() for line in text.splitlines() if re.match(r"^\s*\w+ (-->|-\.->)", line)]


def class_of(text: str, node: str) -> str:
    """The status class assigned to ``node``."""
    for line in text.splitlines():
        match = re.match(r"^\s*class (\S+) (\w+)$", line)
        if match and node in match.group(1).split(","):
            return match.group(2)
    raise AssertionError(f"{node} has no class")


# --------------------------------------------------------------------------- definitions


def test_sequential_saga_is_a_chain_with_its_compensations() -> None:
    """A SagaBase subclass renders its steps in order, from start to end."""
    text = to_mermaid(OrderSaga)
    assert text.startswith("flowchart TD\n")
    reserve, charge, confirm = (node_id(text, name) for name in ("reserve", "charge", "confirm"))
    assert f"start --> {reserve}" in edges(text)
    assert f"{reserve} --> {charge}" in edges(text)
    assert f"{charge} --> {confirm}" in edges(text)
    assert f"{confirm} --> done" in edges(text)
    assert f'{reserve} -.->|"compensate"| {reserve}_undo' in edges(text)
    assert f'{reserve}_undo[/"undo: OrderSaga.release"/]' in text
    assert f"{charge}_undo" not in text
    assert f"{confirm}_undo" not in text


def test_manager_flow_renders_like_its_class() -> None:
    """``manager.flow(name)`` and the class itself give the same diagram."""
    manager = SagaManager()
    manager.register(OrderSaga)
    assert to_mermaid(manager.flow("orders")) == to_mermaid(OrderSaga)


def test_parallel_group_is_a_subgraph_holding_its_children(travel: Flow) -> None:
    """Children are drawn inside their group's subgraph; nested groups nest."""
    lines = [line.strip() for line in to_mermaid(travel).splitlines()]
    book = lines.index('subgraph s0 ["book (parallel)"]')
    extras = lines.index('subgraph s3 ["extras (parallel)"]')
    inner_end = lines.index("end", extras)
    outer_end = lines.index("end", inner_end + 1)
    assert book < lines.index('s1["flight"]') < extras
    assert extras < lines.index('s4["car"]') < inner_end < outer_end
    assert book < lines.index('s2["hotel"]') < outer_end
    assert lines.index('s1_undo[/"undo: undo_flight"/]') < outer_end


def test_declared_conditional_transition_has_one_edge_per_branch(travel: Flow) -> None:
    """A ``transition()`` becomes a decision node with an edge to each declared target."""
    text = to_mermaid(travel)
    approval, ticket = node_id(text, "approval"), node_id(text, "ticket")
    assert 's0_next{"route_on_price?"}' in text
    assert "s0 --> s0_next" in edges(text)
    assert f's0_next -->|"approval"| {approval}' in edges(text)
    assert f's0_next -->|"ticket"| {ticket}' in edges(text)


def test_undeclared_conditional_transition_is_a_decision_node(travel: Flow) -> None:
    """A plain function is drawn as a decision whose targets are chosen at run time."""
    text = to_mermaid(travel)
    ticket = node_id(text, "ticket")
    assert f'{ticket}_next{{"pick_anything?"}}' in text
    assert f"{ticket} --> {ticket}_next" in edges(text)
    assert f"%% {ticket}_next: the next step is chosen at run time" in text


def test_failure_edge_is_dotted_and_styled(travel: Flow) -> None:
    """``on_failure`` is a dotted edge, coloured by a linkStyle at its index."""
    text = to_mermaid(travel)
    approval, apology = node_id(text, "approval"), node_id(text, "apology")
    edge = f'{approval} -.->|"on failure"| {apology}'
    index = edges(text).index(edge)
    assert re.search(rf"^\s*linkStyle {index} stroke:", text, re.MULTILINE)


def test_definition_view_marks_compensations_but_no_status(travel: Flow) -> None:
    """Without a record, compensation nodes get their own class and no step has a status."""
    text = to_mermaid(travel)
    assert class_of(text, "s1_undo") == "compensation"
    assert "classDef completed" not in text
    assert "<br/>" not in text


def test_labels_escape_mermaid_syntax(orchestrator: SagaOrchestrator) -> None:
    """Quotes, brackets and hashes in names cannot break the diagram."""
    flow = orchestrator.define('we"ird', [OrchestratedStep('say "hi" <b>#1</b>', action=noop)])
    text = to_mermaid(flow)
    assert 's0["say #quot;hi#quot; #lt;b#gt;#35;1#lt;/b#gt;"]' in text
    assert '%% saga "we#quot;ird"' in text


def test_other_objects_are_rejected() -> None:
    """Only SagaBase subclasses and compiled flows can be drawn."""
    with pytest.raises(TypeError, match="SagaBase subclass or a compiled Flow"):
        to_mermaid(object())  # type: ignore[arg-type]


def test_invalid_saga_class_raises_its_definition_error() -> None:
    """A class that cannot be registered cannot be drawn either."""

    class Nameless(SagaBase):
        @saga_step("a")
        async def a(self, ctx: SagaContext) -> None:
            return None

    with pytest.raises(SagaDefinitionError, match="must be set"):
        to_mermaid(Nameless)


# --------------------------------------------------------------------------- instances


async def test_instance_view_marks_each_step_status() -> None:
    """Completed, compensated, failed and never-run steps get their status class."""
    async with SagaManager() as manager:
        manager.register(OrderSaga)
        record = await manager.execute("orders", {"decline": True}, timeout=5)
    text = instance_to_mermaid(OrderSaga, record)
    reserve, charge, confirm = (node_id(text, name) for name in ("reserve", "charge", "confirm"))
    assert class_of(text, reserve) == "compensated"
    assert class_of(text, f"{reserve}_undo") == "compensated"
    assert class_of(text, charge) == "failed"
    assert class_of(text, confirm) == "pending"
    assert class_of(text, "done") == "compensated"
    assert f'{reserve}["reserve<br/>compensated, 1 attempt"]' in text
    assert f'{confirm}["confirm<br/>pending"]' in text
    assert f'title: "orders {record.saga_id}: compensated"' in text


async def test_instance_view_of_an_orchestrated_saga(orchestrator: SagaOrchestrator) -> None:
    """Groups show their status; branches not taken stay pending."""
    flow = orchestrator.define("travel", travel_steps())
    record = await orchestrator.execute("travel", {"total": 10}, timeout=5)
    assert record.status is SagaStatus.COMPLETED
    text = instance_to_mermaid(flow, record)
    assert 'subgraph s0 ["book (parallel)<br/>completed"]' in text
    assert class_of(text, "s0") == "completed"
    assert class_of(text, node_id(text, "car")) == "completed"
    assert class_of(text, node_id(text, "approval")) == "pending"
    assert class_of(text, node_id(text, "ticket")) == "completed"
    assert class_of(text, "s1_undo") == "pending"  # completed flight was never undone


async def test_instance_view_of_a_failed_branch(orchestrator: SagaOrchestrator) -> None:
    """A failing child is failed, its completed siblings compensated where they can be."""
    flow = orchestrator.define("travel", travel_steps(car_fails=True))
    record = await orchestrator.execute("travel", {}, timeout=5)
    text = instance_to_mermaid(flow, record)
    assert class_of(text, node_id(text, "car")) == "failed"
    assert class_of(text, "s3") == "failed"  # the nested group
    assert class_of(text, node_id(text, "flight")) == "compensated"
    assert class_of(text, "s1_undo") == "compensated"
    assert class_of(text, node_id(text, "hotel")) == "completed"  # nothing to undo


def test_instance_view_marks_the_next_step_and_visits() -> None:
    """A running saga shows the step it will run next; revisited steps show their visit."""
    record = SagaRecord("s-1", "orders", status=SagaStatus.RUNNING, current_step="charge")
    record.steps["reserve"] = SagaStepRecord(
        "reserve", status=SagaStepStatus.COMPLETED, attempts=2, visits=3
    )
    text = instance_to_mermaid(OrderSaga, record)
    assert '["reserve<br/>completed, 2 attempts, visit 3"]' in text
    assert '["charge<br/>pending (next)"]' in text
    assert "done" not in text.split("classDef failed")[1]  # the end is not reached


async def test_instance_view_never_shows_context_data() -> None:
    """Data and outputs stay out of the diagram."""
    async with SagaManager() as manager:
        manager.register(OrderSaga)
        record = await manager.execute("orders", {"secret": "hunter2"}, timeout=5)
    assert record.steps["charge"].output == {"receipt": "hunter2"}
    assert "hunter2" not in instance_to_mermaid(OrderSaga, record)


def test_record_of_another_saga_is_rejected() -> None:
    """A record is drawn only against its own definition."""
    with pytest.raises(SagaDefinitionError, match="is a 'travel' saga, not 'orders'"):
        instance_to_mermaid(OrderSaga, SagaRecord("s-1", "travel"))


def test_wait_steps_show_their_signal_timeout_and_delay() -> None:
    """A waiting step's label says what it waits for; a parked instance is ``waiting``."""
    from datetime import UTC, datetime

    from lexigram.events.sagas import SagaRecord, SagaStatus, SagaStepRecord, SagaStepStatus
    from lexigram.events.sagas.types import SagaWait

    class Approval(SagaBase):
        name = "approval"

        @saga_step("submit")
        async def submit(self, ctx: SagaContext) -> None:
            return None

        @saga_step("approve", wait_for="manager_ok", wait_timeout=7200, delay=90)
        async def approve(self, ctx: SagaContext) -> None:
            return None

    text = to_mermaid(Approval)
    assert "approve<br/>after 90s, waits for signal manager_ok, timeout 2h" in text
    record = SagaRecord(saga_id="x", saga_name="approval", status=SagaStatus.RUNNING)
    record.steps["submit"] = SagaStepRecord("submit", status=SagaStepStatus.COMPLETED)
    record.steps["approve"] = SagaStepRecord("approve", status=SagaStepStatus.RUNNING)
    at = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    record.waiting = SagaWait("approve", "signal", "manager_ok", at, at)
    instance = instance_to_mermaid(Approval, record)
    assert "waiting for signal manager_ok until 2026-12-02 09:30:00Z" in instance
    assert "classDef waiting" in instance
    assert "class s1 waiting" in instance
