"""SVG drawings of saga flows and instances, laid out in Python for the web admin.

:func:`flow_svg` draws a compiled flow top to bottom (decisions for transition functions,
dotted red failure jumps, parallel groups as boxes of columns, compensations as small linked
nodes, waits as badges), each step coloured by its status (:data:`PALETTE`) when given a
record; :func:`record_svg` draws an instance without its flow. The result is one ``<svg>``
with presentation attributes only (the admin's CSP forbids scripts and inline styles), all
text XML-escaped. Cycles are drawn, never followed: rows come from the longest path without
back edges, and arrows that skip rows or go back up run in lanes at the sides.
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from lexigram.events.sagas._engine.flow import Flow, FlowStep
from lexigram.events.sagas.ops.timeline import NOT_REACHED, WAITING, StepLine, format_duration
from lexigram.events.sagas.ops.timeline import timeline as make_timeline
from lexigram.events.sagas.orchestrator import ConditionalTransition
from lexigram.events.sagas.types import SagaRecord

__all__ = ["PALETTE", "Colours", "flow_svg", "record_svg"]


class Colours(NamedTuple):
    """How a node of one status is painted."""

    fill: str
    stroke: str
    text: str


PALETTE: Mapping[str, Colours] = {
    "pending": Colours("#f4f4f5", "#a1a1aa", "#52525b"),
    "running": Colours("#fef3c7", "#d97706", "#78350f"),
    "completed": Colours("#dcfce7", "#16a34a", "#14532d"),
    "compensating": Colours("#ffedd5", "#ea580c", "#7c2d12"),
    "compensated": Colours("#dbeafe", "#2563eb", "#1e3a8a"),
    "failed": Colours("#fee2e2", "#dc2626", "#7f1d1d"),
    WAITING: Colours("#e0f2fe", "#0ea5e9", "#0c4a6e"),
}
"""Fill, stroke and text colour by step status (the web admin's chips use the same)."""

_PLAIN = Colours("#ffffff", "#64748b", "#1e293b")  # a definition, without an instance
_UNDO = Colours("#f5f3ff", "#8b5cf6", "#4c1d95")
_TERMINAL = Colours("#334155", "#334155", "#ffffff")
_EDGE, _FAILURE = "#94a3b8", "#dc2626"
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# No font is loaded, so text is not measured: widths are estimates per character.
_CHAR_BOLD, _CHAR_SMALL = 7.6, 6.2
_PAD, _NAME_H, _LINE_H, _BADGE_H = 11, 17, 15, 18
_MIN_W, _MAX_W = 116, 290
_GAP_X, _GAP_Y, _CHILD_GAP, _UNDO_GAP = 36, 60, 16, 22
_LANE, _MARGIN = 13, 18
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _esc(text: object) -> str:
    """Escape ``text`` for XML content and attributes (dropping characters XML forbids)."""
    return html.escape(_INVALID_XML.sub("\ufffd", str(text)), quote=True)


def _fit(text: str, width: float, char: float = 1.0) -> str:
    most = max(int(width / char), 4)
    return text if len(text) <= most else text[: most - 1] + "\u2026"


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


@dataclass(eq=False)
class _Box:
    """A node being laid out: a step, a group, a decision, a compensation, start or end."""

    kind: str  # "start" | "end" | "step" | "group" | "decision" | "undo"
    label: str
    status: str | None = None
    lines: list[str] = field(default_factory=list)
    badge: str | None = None
    tooltip: str = ""
    step: str | None = None  # the step's name (``data-step``)
    children: list[_Box] = field(default_factory=list)
    undo: _Box | None = None
    dashed: bool = False
    faint: bool = False
    w: float = 0.0
    h: float = 0.0
    x: float = 0.0
    y: float = 0.0

    @property
    def slot(self) -> float:
        return self.w + (0.0 if self.undo is None else _UNDO_GAP + self.undo.w)


_Edge = tuple[_Box, _Box, bool]  # source, target, whether it is a failure jump
_Route = tuple[float, float, float]  # a lane: the y below the source, above the target; x


# --------------------------------------------------------------------------- building


class _View:
    """What a record says about each step (nothing without a record)."""

    def __init__(self, record: SagaRecord | None) -> None:
        self.record = record
        steps = () if record is None else make_timeline(record).steps
        self.lines: dict[str, StepLine] = {line.name: line for line in steps}

    def box(self, kind: str, name: str, head: list[str], badge: str | None = None) -> _Box:
        box = _Box(kind, name, badge=badge, step=name)
        tooltip = [name, *head]
        record, line = self.record, self.lines.get(name)
        if record is not None:
            box.status = "pending" if line is None else line.status
            box.lines = [_status_line(record, name, line, group=kind == "group")]
            box.faint = line is None
            nxt = record.current_step == name and not record.is_terminal
            box.dashed = box.status == WAITING or (line is None and nxt)
            tooltip.append(f"status: {box.status if line is not None else NOT_REACHED}")
        box.tooltip = "\n".join(tooltip + ([] if line is None else _facts(line)))
        return box

    def undo(self, name: str, label: str) -> _Box:
        line, status = self.lines.get(name), None if self.record is None else "pending"
        status = status if line is None or line.compensation is None else line.compensation
        tooltip = label if status is None else f"{label}\ncompensation: {status}"
        return _Box("undo", label, status, tooltip=tooltip, step=name, faint=status == "pending")


def _status_line(record: SagaRecord, name: str, line: StepLine | None, *, group: bool) -> str:
    if line is None:
        return "next" if record.current_step == name and not record.is_terminal else NOT_REACHED
    wait = line.waiting
    if wait is not None:
        what = f"signal {wait.signal}" if wait.kind == "signal" else wait.kind
        return f"waiting for {what}" + ("" if wait.until is None else f" until {wait.until:%H:%M}")
    parts = [
        line.status,
        f"{line.attempts} attempts" if line.attempts > 1 and not group else "",
        f"visit {line.visits}" if line.visits > 1 else "",
    ]
    return " \u00b7 ".join(part for part in parts if part)


def _facts(line: StepLine) -> list[str]:
    started, error, undo_error = line.started_at, line.error, line.compensation_error
    facts = [
        f"attempts: {line.attempts}",
        f"visits: {line.visits}" if line.visits > 1 else "",
        "" if started is None else f"started: {started:%Y-%m-%d %H:%M:%S} UTC",
        "" if line.duration is None else f"duration: {format_duration(line.duration)}",
        f"error: {_fit(error, 300)}" if error else "",
        "" if line.compensation is None else f"compensation: {line.compensation}",
        f"compensation error: {_fit(undo_error, 300)}" if undo_error else "",
    ]
    return [fact for fact in facts if fact]


def _callable_name(func: Callable[..., object]) -> str:
    name = getattr(func, "__name__", None)  # not the qualname: no "OrderSaga." everywhere
    return name if isinstance(name, str) else type(func).__name__


def _flow_box(node: FlowStep, view: _View) -> _Box:
    wait, badge = node.wait, None
    if wait is not None:
        parts = [
            "" if wait.delay is None else f"delay {format_duration(wait.delay)}",
            "" if wait.signal is None else f"signal {wait.signal}",
            "" if wait.timeout is None else f"timeout {format_duration(wait.timeout)}",
        ]
        badge = " \u00b7 ".join(part for part in parts if part)
    undo = None if node.compensation is None else f"undo: {_callable_name(node.compensation)}"
    head = [f"parallel group of {len(node.children)}"] if node.is_group else []
    head += [text for text in (badge, undo) if text is not None]
    box = view.box("group" if node.is_group else "step", node.name, head, badge)
    box.children = [_flow_box(child, view) for child in node.children]
    box.undo = None if undo is None else view.undo(node.name, undo)
    return box


def flow_svg(flow: Flow, record: SagaRecord | None = None) -> str:
    """Draw ``flow`` as SVG; with ``record``, colour each step by its status.

    Args:
        flow: A compiled flow (``runtime.flow(name)``, or what ``define`` returns).
        record: One instance of it, e.g. from ``await store.load(saga_id)``.

    Returns:
        One ``<svg>`` element (XML), with a ``<g data-step="...">`` per step.
    """
    view = _View(record)
    start, end = _Box("start", "start", tooltip="start"), _Box("end", "end", tooltip="end")
    boxes = {name: _flow_box(node, view) for name, node in flow.steps.items() if not node.parent}
    nodes, edges = [start], [(start, boxes[flow.entry], False)]
    for name, box in boxes.items():
        nodes.append(box)
        node = flow.steps[name]
        target = node.next
        if target is None or isinstance(target, str):
            edges.append((box, end if target is None else boxes[target], False))
        else:
            choose = _Box("decision", _callable_name(target) + "?")
            nodes.append(choose)
            edges.append((box, choose, False))
            if isinstance(target, ConditionalTransition):
                options = ", ".join(option or "the end" for option in target.targets)
                choose.tooltip = f"{choose.label}\nmay choose: {options}"
                edges += [(choose, boxes[t] if t else end, False) for t in target.targets]
            else:
                choose.lines = ["chosen at run time"]
                choose.tooltip = f"{choose.label}\nthe next step is chosen at run time"
        if node.on_failure is not None:
            edges.append((box, boxes[node.on_failure], True))
    if record is not None and record.is_terminal:
        end.status = record.status.value
    if any(edge[1] is end for edge in edges):
        nodes.append(end)
    title = flow.name if record is None else f"{flow.name} {record.saga_id}: {record.status.value}"
    return _draw(nodes, edges, title)


def record_svg(record: SagaRecord) -> str:
    """Draw a saga instance without its flow: its steps in the order it first entered them."""
    view = _View(record)
    children: dict[str, list[str]] = {}
    for name, step in record.steps.items():
        parent = step.parent if step.parent in record.steps else None
        children.setdefault(parent or "", []).append(name)

    def box_of(name: str) -> _Box:
        inner = [box_of(child) for child in children.get(name, [])]
        box = view.box("group" if inner else "step", name, [])
        box.children = inner
        box.undo = view.undo(name, "undo") if view.lines[name].compensation else None
        return box

    nodes = [_Box("start", "start", tooltip="start"), *map(box_of, children.get("", []))]
    if record.is_terminal:
        nodes.append(_Box("end", "end", status=record.status.value, tooltip="end"))
    edges = [(a, b, False) for a, b in itertools.pairwise(nodes)]
    return _draw(nodes, edges, f"{record.saga_name} {record.saga_id}: {record.status.value}")


# --------------------------------------------------------------------------- layout


def _measure(box: _Box) -> None:
    if box.undo is not None:
        box.undo.w, box.undo.h = min(max(len(box.undo.label) * _CHAR_SMALL + 18, 56), 220), 26
    if box.kind in ("start", "end"):
        box.w, box.h = 72, 30
        return
    if box.kind == "decision":
        box.w = min(max(len(box.label) * _CHAR_BOLD + 64, 110), _MAX_W)
        box.h = 52 + _LINE_H * len(box.lines)
        return
    text = max(
        [len(box.label) * _CHAR_BOLD + (70 if box.kind == "group" else 0)]
        + [len(line) * _CHAR_SMALL for line in box.lines]
        + [len(box.badge) * _CHAR_SMALL + 14 if box.badge else 0]
    )
    box.w = min(max(text + 2 * _PAD, _MIN_W), _MAX_W)
    box.h = 2 * _PAD + _NAME_H + _LINE_H * len(box.lines) + (_BADGE_H + 6 if box.badge else 0)
    for child in box.children:
        _measure(child)
    if box.children:
        inner = sum(c.slot for c in box.children) + _CHILD_GAP * (len(box.children) - 1)
        box.w = max(box.w, inner + 2 * _PAD)
        box.h += max(c.h for c in box.children) + _PAD - 4


def _place(box: _Box, x: float, y: float) -> None:
    box.x, box.y = x, y
    if box.undo is not None:
        box.undo.x, box.undo.y = x + box.w + _UNDO_GAP, y + (min(box.h, 60) - box.undo.h) / 2
    inner = sum(c.slot for c in box.children) + _CHILD_GAP * (len(box.children) - 1)
    cx, top = x + (box.w - inner) / 2, y + _PAD + _NAME_H + _LINE_H * len(box.lines) + 6
    for child in box.children:
        _place(child, cx, top)
        cx += child.slot + _CHILD_GAP


def _layers(nodes: list[_Box], edges: list[_Edge]) -> tuple[list[int], set[int]]:
    """Each node's row (its longest path over the edges not closing a cycle); those edges.

    Nodes the start does not reach (targets of undeclared transitions) go below those.
    """
    index = {id(node): position for position, node in enumerate(nodes)}
    out = [[number for number, edge in enumerate(edges) if edge[0] is node] for node in nodes]
    state = [0] * len(nodes)  # 0 unseen, 1 on the path being explored, 2 done
    back: set[int] = set()
    layer = [0] + [1] * (len(nodes) - 1)  # nothing shares the start's row
    for root in range(len(nodes)):  # the start first, then whatever it does not reach
        if state[root]:
            continue
        if root:
            open_ends = [p for p, n in enumerate(nodes) if n.kind == "decision" and not out[p]]
            layer[root] = max([layer[root], *(layer[p] + 1 for p in open_ends if state[p])])
        order: list[int] = []
        stack = [(root, iter(out[root]))]
        state[root] = 1
        while stack:  # iterative: a long chain must not reach the recursion limit
            current, pending = stack[-1]
            found = next(pending, None)
            if found is None:
                state[current] = 2
                order.append(stack.pop()[0])
                continue
            target = index[id(edges[found][1])]
            if state[target] == 1:
                back.add(found)
            elif state[target] == 0:
                state[target] = 1
                stack.append((target, iter(out[target])))
        members = set(order)
        for current in reversed(order):  # reversed post-order is a topological order
            for edge_no in out[current]:
                target = index[id(edges[edge_no][1])]
                if edge_no not in back and target in members:
                    layer[target] = max(layer[target], layer[current] + 1)
    if len(nodes) > 1 and nodes[-1].kind == "end":
        layer[-1] = max(layer[:-1]) + 1
    return layer, back


def _draw(nodes: list[_Box], edges: list[_Edge], title: str) -> str:
    for node in nodes:
        _measure(node)
    layer, back = _layers(nodes, edges)
    rows: dict[int, list[_Box]] = {}
    for position, node in enumerate(nodes):
        rows.setdefault(layer[position], []).append(node)
    row_of = {id(node): layer[position] for position, node in enumerate(nodes)}
    lanes: dict[int, tuple[int, int]] = {}  # edge number -> (side: -1 left, 1 right; lane)
    used = {-1: 0, 1: 0}
    for number, (source, target, _) in enumerate(edges):
        span = row_of[id(target)] - row_of[id(source)]
        if number in back or span != 1:
            side = -1 if number in back or span <= 0 else 1
            lanes[number] = (side, used[side])
            used[side] += 1
    widths = {k: sum(n.slot for n in row) + _GAP_X * (len(row) - 1) for k, row in rows.items()}
    # Rows are centred on their nodes: the last node's compensation hangs out to the right.
    half = {k: (widths[k] - row[-1].slot + row[-1].w) / 2 for k, row in rows.items()}
    reach = max(half.values()), max(widths[k] - half[k] for k in rows)
    inner = sum(reach)
    left = _MARGIN + used[-1] * _LANE + (8 if used[-1] else 0)
    width = left + inner + _MARGIN + used[1] * _LANE + (8 if used[1] else 0)
    bounds: dict[int, tuple[float, float]] = {}
    y = float(_MARGIN)
    for number in sorted(rows):
        tall = max(n.h for n in rows[number])
        x = left + reach[0] - half[number]
        for node in rows[number]:
            _place(node, x, y + (tall - node.h) / 2)
            x += node.slot + _GAP_X
        bounds[number] = (y, y + tall)
        y += tall + _GAP_Y
    w, h = _num(width), _num(y - _GAP_Y + _MARGIN)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lx-diagram" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{_esc(title)}" '
        f'font-family="{_esc(_FONT)}" font-size="13">',
        f"<title>{_esc(title)}</title><defs>",
        *(
            f'<marker id="lx-arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
            for kind, colour in (("next", "#64748b"), ("failure", _FAILURE))
        ),
        "</defs>",
    ]
    lane_x = {-1: left - 8, 1: left + inner + 8}
    for number, (source, target, failure) in enumerate(edges):
        route = None
        if number in lanes:
            side, lane = lanes[number]
            stagger = 10 + (lane % 4) * 9
            below = bounds[row_of[id(source)]][1] + stagger
            above = bounds[row_of[id(target)]][0] - _GAP_Y + 4 + stagger
            route = (below, above, lane_x[side] + side * lane * _LANE)
        parts.append(_edge(source, target, route, failure=failure))
    for node in nodes:
        parts.extend(_node(node))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- drawing


def _text(x: float, y: float, text: str, fill: str, extra: str = "", size: float = 13) -> str:
    anchor = "" if "text-anchor" in extra else ' text-anchor="middle"'
    at = f'x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" fill="{fill}"'
    return f"<text {at}{anchor}{extra}>{_esc(text)}</text>"


def _rect(box: _Box, radius: int, colours: Colours, extra: str = "") -> str:
    at = f'x="{_num(box.x)}" y="{_num(box.y)}" width="{_num(box.w)}" height="{_num(box.h)}"'
    return f'<rect {at} rx="{radius}" fill="{colours.fill}" stroke="{colours.stroke}"{extra}/>'


def _edge(source: _Box, target: _Box, route: _Route | None, *, failure: bool) -> str:
    """An arrow: a curve to the next row, or through a lane (``(below, above, lane x)``)."""
    sx, sy = source.x + source.w / 2, source.y + source.h
    tx, ty = target.x + target.w / 2, target.y
    label, kind = "", "failure" if failure else "next"
    if route is None:
        bend = (ty - sy) / 2
        path = f"M{_num(sx)},{_num(sy)} C{_num(sx)},{_num(sy + bend)} "
        path += f"{_num(tx)},{_num(ty - bend)} {_num(tx)},{_num(ty)}"
    else:
        below, above, x = route
        path = f"M{_num(sx)},{_num(sy)} V{_num(below)} H{_num(x)} V{_num(above)} "
        path += f"H{_num(tx)} V{_num(ty)}"
    if failure:
        right = tx >= sx
        anchor = f' text-anchor="{"start" if right else "end"}"'
        label = _text(sx + (6 if right else -6), sy + 13, "on failure", _FAILURE, anchor, 10.5)
    stroke = f'stroke="{_FAILURE}" stroke-dasharray="6 4"' if failure else f'stroke="{_EDGE}"'
    return (
        f'<g class="lx-edge lx-edge-{kind}"><path d="{path}" fill="none" {stroke} '
        f'stroke-width="1.6" stroke-linejoin="round" marker-end="url(#lx-arrow-{kind})"/>'
        f"{label}</g>"
    )


def _node(box: _Box) -> Iterator[str]:
    colours = PALETTE.get(box.status or "", _UNDO if box.kind == "undo" else _PLAIN)
    step = f' data-step="{_esc(box.step)}"' if box.step and box.kind != "undo" else ""
    status = f' data-status="{_esc(box.status)}"' if box.status else ""
    yield f'<g class="lx-node lx-{box.kind}"{step}{status}>'
    yield f"<title>{_esc(box.tooltip or box.label)}</title>"
    x, y, w, cx = box.x, box.y, box.w, box.x + box.w / 2
    faint = ' opacity="0.6"' if box.faint else ""
    if box.kind in ("start", "end"):
        paint = colours if box.status else _TERMINAL
        yield _rect(box, 15, paint, ' stroke-width="1.6"')
        yield _text(cx, y + 19.5, box.label, paint.text, ' font-weight="600"', 12)
    elif box.kind == "decision":
        points = f"{_num(cx)},{_num(y)} {_num(x + w)},{_num(y + 26)} {_num(cx)},{_num(y + 52)}"
        yield (
            f'<polygon points="{points} {_num(x)},{_num(y + 26)}" fill="#fffbeb" '
            'stroke="#b45309" stroke-width="1.4"/>'
        )
        label = _fit(box.label, w - 48, _CHAR_BOLD)
        yield _text(cx, y + 30.5, label, "#78350f", ' font-weight="600"')
        for number, line in enumerate(box.lines):
            yield _text(cx, y + 64 + number * _LINE_H, line, "#92400e", "", 11)
    elif box.kind == "undo":
        mid = _num(y + box.h / 2)
        yield (
            f'<line x1="{_num(x - _UNDO_GAP)}" y1="{mid}" x2="{_num(x)}" y2="{mid}" '
            f'stroke="{_UNDO.stroke}" stroke-width="1.3" stroke-dasharray="3 3"/>'
        )
        yield _rect(box, 6, colours, f' stroke-width="1.2" stroke-dasharray="3 2"{faint}')
        yield _text(cx, y + 17, _fit(box.label, w - 12, _CHAR_SMALL), colours.text, "", 11)
    else:
        yield from _box_body(box, colours, faint)
    yield "</g>"
    if box.undo is not None:
        yield from _node(box.undo)
    for child in box.children:
        yield from _node(child)


def _box_body(box: _Box, colours: Colours, faint: str) -> Iterator[str]:
    group = box.kind == "group"
    x, y, w = box.x, box.y, box.w
    dash = "5 3" if box.dashed else "7 4" if group else ""
    outline = f' stroke-dasharray="{dash}"' if dash else ""
    width = f' stroke-width="{2.2 if box.dashed else 1.6}"'
    yield _rect(box, 12 if group else 8, colours, f"{width}{outline}{faint}")
    name = _fit(box.label, w - 2 * _PAD - (70 if group else 0), _CHAR_BOLD)
    anchor, at = (' text-anchor="start"', x + _PAD) if group else ("", x + w / 2)
    yield _text(at, y + _PAD + 12, name, colours.text, f' font-weight="600"{anchor}')
    if group:
        yield _text(x + w - _PAD, y + 23, "parallel", "#64748b", ' text-anchor="end"', 10.5)
    line_y = y + _PAD + _NAME_H + 11
    for line in box.lines:
        yield _text(at, line_y, _fit(line, w - 2 * _PAD, _CHAR_SMALL), colours.text, anchor, 11)
        line_y += _LINE_H
    if box.badge:
        text = _fit(box.badge, w - 2 * _PAD - 12, _CHAR_SMALL)
        pill = min(len(text) * _CHAR_SMALL + 14, w - 2 * _PAD)
        yield (
            f'<g class="lx-badge"><rect x="{_num(x + (w - pill) / 2)}" y="{_num(line_y - 6)}" '
            f'width="{_num(pill)}" height="{_BADGE_H}" rx="9" fill="#e0f2fe" stroke="#0ea5e9"/>'
        )
        yield _text(x + w / 2, line_y + 6.5, text, "#075985", "", 10.5) + "</g>"
