"""SVG drawings of flows and saga instances (``ops/svg.py``), read back as XML."""

from __future__ import annotations

import importlib
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from lexigram.events.sagas import (
    OrchestratedStep,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaOrchestrator,
    SagaRecord,
    SagaStatus,
    SagaStepRecord,
    SagaStepResult,
    SagaStepStatus,
    SagaWait,
    saga_step,
    transition,
)
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.ops.svg import PALETTE, flow_svg, record_svg

SVG = "{http://www.w3.org/2000/svg}"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


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
        return SagaStepResult.Ok({"receipt": "r-1"})

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> None:
        return None


class ApprovalSaga(SagaBase):
    name = "approval"

    @saga_step("submit")
    async def submit(self, ctx: SagaContext) -> None:
        return None

    @saga_step("approve", wait_for="approval", wait_timeout=3 * 86400)
    async def approve(self, ctx: SagaContext) -> None:
        return None

    @saga_step("pay", delay=7200)
    async def pay(self, ctx: SagaContext) -> None:
        return None


async def noop(ctx: SagaContext) -> None:
    return None


async def undo(ctx: SagaContext) -> None:
    return None


async def no_cars(ctx: SagaContext) -> SagaStepResult:
    return SagaStepResult.fail("no cars")


@transition("approval", "ticket", None)
def route_on_price(ctx: SagaContext) -> str | None:
    return "approval" if ctx.get("total", 0) > 100 else "ticket"


def anywhere(ctx: SagaContext) -> str | None:
    return None


def travel_steps(*, car_fails: bool = False) -> list[OrchestratedStep]:
    return [
        OrchestratedStep(
            "book",
            parallel=[
                OrchestratedStep("flight", action=noop, compensation=undo),
                OrchestratedStep("hotel", action=noop),
                OrchestratedStep(
                    "extras",
                    parallel=[OrchestratedStep("car", action=no_cars if car_fails else noop)],
                ),
            ],
            next_step=route_on_price,
        ),
        OrchestratedStep("approval", action=noop, next_step="ticket", on_failure="apology"),
        OrchestratedStep("ticket", action=noop, next_step=anywhere),
        OrchestratedStep("apology", action=noop),
    ]


@pytest.fixture
async def orchestrator() -> AsyncIterator[SagaOrchestrator]:
    runtime = SagaOrchestrator(config=SagaConfig(retry_delay_seconds=0))
    yield runtime
    await runtime.close()


@pytest.fixture
async def manager() -> AsyncIterator[SagaManager]:
    runtime = SagaManager(config=SagaConfig(retry_delay_seconds=0))
    runtime.register(OrderSaga)
    runtime.register(ApprovalSaga)
    yield runtime
    await runtime.close()


def parse(text: str) -> ET.Element:
    """The drawing as XML (fails the test when it is not well-formed)."""
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    return root


def nodes(root: ET.Element, kind: str = "") -> dict[str, ET.Element]:
    """The ``<g>`` of each step (or of each node of ``kind``), by step name."""
    return {
        g.attrib["data-step"]: g
        for g in root.iter(f"{SVG}g")
        if "data-step" in g.attrib and (not kind or f"lx-{kind}" in g.attrib["class"].split())
    }


def shape(node: ET.Element) -> ET.Element:
    """The node's outline (a rect, or a decision's polygon)."""
    found = node.find(f"{SVG}rect")
    if found is None:
        found = node.find(f"{SVG}polygon")
    assert found is not None
    return found


def texts(node: ET.Element) -> list[str]:
    return [text.text or "" for text in node.iter(f"{SVG}text")]


def box(node: ET.Element) -> tuple[float, float, float, float]:
    rect = shape(node)
    x, y = float(rect.attrib["x"]), float(rect.attrib["y"])
    return x, y, x + float(rect.attrib["width"]), y + float(rect.attrib["height"])


def edge_kinds(root: ET.Element) -> list[str]:
    return [g.attrib["class"] for g in root.iter(f"{SVG}g") if "lx-edge" in g.attrib["class"]]


# --------------------------------------------------------------------------- definitions


def test_a_sequential_saga_has_a_node_per_step_and_a_chain_of_arrows(manager: SagaManager) -> None:
    """Each step is one node with a tooltip; start, steps and end are linked in order."""
    root = parse(flow_svg(manager.flow("orders")))
    steps = nodes(root)
    assert set(steps) == {"reserve", "charge", "confirm"}
    for node in steps.values():
        title = node.find(f"{SVG}title")
        assert title is not None
        assert title.text is not None
        assert title.text.startswith(node.attrib["data-step"])
    tops = [box(steps[name])[1] for name in ("reserve", "charge", "confirm")]
    assert tops == sorted(tops)
    assert edge_kinds(root).count("lx-edge lx-edge-next") == 4  # start, 2 between, end
    assert int(float(root.attrib["width"])) > 0
    assert int(float(root.attrib["height"])) > 0


def test_a_compensation_is_a_small_node_beside_its_step(manager: SagaManager) -> None:
    """Only steps with a compensation get an undo node, named after the function."""
    root = parse(flow_svg(manager.flow("orders")))
    undos = [g for g in root.iter(f"{SVG}g") if "lx-undo" in g.attrib.get("class", "")]
    assert len(undos) == 1
    assert texts(undos[0]) == ["undo: release"]
    assert box(undos[0])[0] > box(nodes(root)["reserve"])[2]  # to the right of its step


def test_waits_are_shown_as_a_badge(manager: SagaManager) -> None:
    """A signal with its timeout, and a delay, are written on the step."""
    steps = nodes(parse(flow_svg(manager.flow("approval"))))
    assert any(
        "signal approval" in text and "timeout 3d" in text for text in texts(steps["approve"])
    )
    assert any("delay 2h" in text for text in texts(steps["pay"]))
    assert steps["approve"].find(f"{SVG}g[@class='lx-badge']") is not None
    assert steps["submit"].find(f"{SVG}g[@class='lx-badge']") is None


def test_a_parallel_group_is_a_box_holding_a_column_per_child(
    orchestrator: SagaOrchestrator,
) -> None:
    """Children (and nested groups) are drawn inside their group, side by side."""
    root = parse(flow_svg(orchestrator.define("travel", travel_steps())))
    groups, steps = nodes(root, "group"), nodes(root)
    assert set(groups) == {"book", "extras"}
    left, top, right, bottom = box(groups["book"])
    for child in ("flight", "hotel", "extras", "car"):
        x0, y0, x1, y1 = box(steps[child])
        assert left < x0 < x1 < right
        assert top < y0 < y1 < bottom
    assert box(steps["flight"])[2] < box(steps["hotel"])[0] < box(steps["extras"])[0]
    ex0, ey0, ex1, ey1 = box(groups["extras"])
    cx0, cy0, cx1, cy1 = box(steps["car"])
    assert ex0 < cx0 < cx1 < ex1
    assert ey0 < cy0 < cy1 < ey1


def test_transitions_become_decisions_and_failures_dotted_red_arrows(
    orchestrator: SagaOrchestrator,
) -> None:
    """Declared targets get an arrow each; an undeclared function says so; on_failure is red."""
    root = parse(flow_svg(orchestrator.define("travel", travel_steps())))
    decisions = [g for g in root.iter(f"{SVG}g") if "lx-decision" in g.attrib.get("class", "")]
    labels = sorted(texts(decision)[0] for decision in decisions)
    assert labels == ["anywhere?", "route_on_price?"]
    unknown = next(d for d in decisions if texts(d)[0] == "anywhere?")
    assert "chosen at run time" in texts(unknown)
    kinds = edge_kinds(root)
    # start->book, book->decision, decision->approval/ticket/end, approval->ticket,
    # ticket->decision, apology->end
    assert kinds.count("lx-edge lx-edge-next") == 8
    assert kinds.count("lx-edge lx-edge-failure") == 1
    failure = next(
        g for g in root.iter(f"{SVG}g") if g.attrib.get("class") == "lx-edge lx-edge-failure"
    )
    path = failure.find(f"{SVG}path")
    assert path is not None
    assert path.attrib["stroke"] == "#dc2626"
    assert "stroke-dasharray" in path.attrib
    assert "on failure" in texts(failure)


def test_cycles_are_drawn_once_and_do_not_loop(orchestrator: SagaOrchestrator) -> None:
    """A flow that loops back (and a step leading to itself) is drawn, each step once."""

    def again(ctx: SagaContext) -> str | None:
        return "poll"

    flow = orchestrator.define(
        "loop",
        [
            OrchestratedStep("start_job", action=noop, next_step="poll"),
            OrchestratedStep("poll", action=noop, next_step="check", on_failure="poll"),
            OrchestratedStep("check", action=noop, next_step=transition("poll", None)(again)),
        ],
    )
    root = parse(flow_svg(flow))
    assert set(nodes(root)) == {"start_job", "poll", "check"}
    assert box(nodes(root)["poll"])[1] < box(nodes(root)["check"])[1]


def test_a_long_chain_does_not_reach_the_recursion_limit(orchestrator: SagaOrchestrator) -> None:
    """Layout is iterative: two thousand steps in a row are drawn."""
    count = 2000
    steps = [
        OrchestratedStep(f"s{i}", action=noop, next_step=f"s{i + 1}" if i + 1 < count else None)
        for i in range(count)
    ]
    root = parse(flow_svg(orchestrator.define("long", steps)))
    assert len(nodes(root)) == count


def test_names_are_escaped(orchestrator: SagaOrchestrator) -> None:
    """A step named ``<script>&"`` is text, never markup."""
    name = '<script>&"'
    flow = orchestrator.define("we<ird>", [OrchestratedStep(name, action=noop, compensation=undo)])
    text = flow_svg(flow)
    assert "<script" not in text
    root = parse(text)
    assert set(nodes(root)) == {name}
    assert name in texts(nodes(root)[name])
    assert root.attrib["aria-label"] == "we<ird>"


def test_the_drawing_holds_no_script_style_or_external_reference(
    orchestrator: SagaOrchestrator,
) -> None:
    """Only presentation attributes: nothing the admin's CSP would block or fetch."""
    root = parse(flow_svg(orchestrator.define("travel", travel_steps())))
    for element in root.iter():
        assert element.tag not in (f"{SVG}script", f"{SVG}style", f"{SVG}image")
        assert "style" not in element.attrib
        assert not any(name.startswith("on") for name in element.attrib)
        assert not any("http" in value for name, value in element.attrib.items() if name != "xmlns")


def test_it_imports_without_starlette(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drawing module needs nothing beyond the standard library."""
    monkeypatch.setitem(sys.modules, "starlette", None)
    monkeypatch.delitem(sys.modules, "lexigram.events.sagas.ops.svg")
    module = importlib.import_module("lexigram.events.sagas.ops.svg")
    assert callable(module.flow_svg)


# --------------------------------------------------------------------------- instances


def fill_of(node: ET.Element) -> str:
    return shape(node).attrib["fill"]


async def test_each_step_is_coloured_by_its_status(manager: SagaManager) -> None:
    """Completed, failed and compensated steps, and the step never reached, by the palette."""
    record = await manager.execute("orders", {"decline": True})
    root = parse(flow_svg(manager.flow("orders"), record))
    steps = nodes(root)
    expected = {"reserve": "compensated", "charge": "failed", "confirm": "pending"}
    for name, status in expected.items():
        assert steps[name].attrib["data-status"] == status
        assert fill_of(steps[name]) == PALETTE[status].fill
    assert "not reached" in texts(steps["confirm"])
    undo_node = next(g for g in root.iter(f"{SVG}g") if "lx-undo" in g.attrib.get("class", ""))
    assert undo_node.attrib["data-status"] == "compensated"
    end = next(g for g in root.iter(f"{SVG}g") if "lx-end" in g.attrib.get("class", ""))
    assert fill_of(end) == PALETTE["compensated"].fill
    title = steps["charge"].find(f"{SVG}title")
    assert title is not None
    assert "error: declined" in (title.text or "")


async def test_a_completed_instance_is_green_from_start_to_end(manager: SagaManager) -> None:
    """Every step of a completed saga is painted completed."""
    record = await manager.execute("orders", {})
    steps = nodes(parse(flow_svg(manager.flow("orders"), record)))
    assert {node.attrib["data-status"] for node in steps.values()} == {"completed"}
    assert {fill_of(node) for node in steps.values()} == {PALETTE["completed"].fill}


def parked(status: SagaStatus = SagaStatus.RUNNING) -> SagaRecord:
    started = NOW - timedelta(minutes=5)
    return SagaRecord(
        saga_id="exp-1",
        saga_name="approval",
        status=status,
        steps={
            "submit": SagaStepRecord(
                "submit", SagaStepStatus.COMPLETED, started, started, attempts=1, visits=1
            ),
            "approve": SagaStepRecord("approve", SagaStepStatus.RUNNING, started, visits=1),
        },
        created_at=started,
        updated_at=started,
        current_step="approve",
        waiting=SagaWait("approve", "signal", "approval", NOW + timedelta(days=3), started),
    )


def test_the_step_a_parked_saga_waits_at_is_waiting(manager: SagaManager) -> None:
    """The parked step is painted ``waiting``, dashed, with what it waits for."""
    steps = nodes(parse(flow_svg(manager.flow("approval"), parked())))
    approve = steps["approve"]
    assert approve.attrib["data-status"] == "waiting"
    assert fill_of(approve) == PALETTE["waiting"].fill
    assert "stroke-dasharray" in shape(approve).attrib
    assert any(text.startswith("waiting for signal approval") for text in texts(approve))
    assert steps["pay"].attrib["data-status"] == "pending"


def test_a_record_alone_draws_the_steps_it_entered() -> None:
    """Without the flow: the record's steps in order; no end while the saga runs."""
    root = parse(record_svg(parked()))
    steps = nodes(root)
    assert list(steps) == ["submit", "approve"]
    assert steps["approve"].attrib["data-status"] == "waiting"
    assert not [g for g in root.iter(f"{SVG}g") if "lx-end" in g.attrib.get("class", "")]
    assert box(steps["submit"])[1] < box(steps["approve"])[1]


async def test_a_record_alone_nests_parallel_children(orchestrator: SagaOrchestrator) -> None:
    """Children stay inside their group, and an end node shows the terminal status."""
    orchestrator.define("travel", travel_steps(car_fails=True))
    record = await orchestrator.execute("travel", {"total": 500})
    assert record.status is SagaStatus.COMPENSATED
    root = parse(record_svg(record))
    groups, steps = nodes(root, "group"), nodes(root)
    assert set(groups) == {"book", "extras"}
    left, top, right, bottom = box(groups["book"])
    x0, y0, x1, y1 = box(steps["car"])
    assert left < x0 < x1 < right
    assert top < y0 < y1 < bottom
    assert steps["car"].attrib["data-status"] == "failed"
    undos = [g for g in root.iter(f"{SVG}g") if "lx-undo" in g.attrib.get("class", "")]
    assert [g.attrib["data-status"] for g in undos] == ["compensated"]
    end = next(g for g in root.iter(f"{SVG}g") if "lx-end" in g.attrib.get("class", ""))
    assert end.attrib["data-status"] == "compensated"


def test_every_status_has_distinct_colours() -> None:
    """The palette covers every step status and ``waiting``, each with its own fill."""
    expected = {status.value for status in SagaStepStatus} | {"waiting"}
    assert set(PALETTE) == expected
    assert len({colours.fill for colours in PALETTE.values()}) == len(PALETTE)
