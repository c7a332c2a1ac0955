"""Mermaid diagrams of saga definitions and of saga instances.

:func:`to_mermaid` draws a definition — a ``SagaBase`` subclass or a compiled flow (what
``SagaOrchestrator.define`` returns, or ``runtime.flow(name)`` for either front-end) — as a
Mermaid ``flowchart``: steps, their compensations, parallel groups as subgraphs,
conditional transitions as decision nodes, failure jumps as dotted edges, and what a step
waits for (a signal and its timeout, a delay) under its name.
:func:`instance_to_mermaid` draws the same graph for one saga instance, colouring each step
by its recorded status. Paste the text into any Mermaid renderer (GitHub and most
documentation tools render fenced ``mermaid`` blocks).

Only names and statuses appear in the text: never context data, outputs or errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lexigram.events.sagas._engine.flow import Flow, FlowStep
from lexigram.events.sagas.base import SagaBase, compile_saga
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.errors import SagaDefinitionError
from lexigram.events.sagas.orchestrator import ConditionalTransition
from lexigram.events.sagas.types import SagaRecord, SagaStepRecord, SagaStepStatus

__all__ = ["SagaDefinition", "instance_to_mermaid", "to_mermaid"]

SagaDefinition = type[SagaBase] | Flow
"""What the diagram functions draw: a ``SagaBase`` subclass or a compiled flow."""

_START = "start"
_END = "done"  # "end" is a keyword in Mermaid flowcharts

_STATUS_STYLES: Mapping[str, str] = {
    "pending": "fill:#f4f4f4,stroke:#9e9e9e,color:#616161",
    "running": "fill:#fff4c2,stroke:#c79a00",
    "completed": "fill:#dcf2de,stroke:#2e7d32",
    "compensating": "fill:#ffe6c7,stroke:#e07b00",
    "compensated": "fill:#dfe8f8,stroke:#3760a8",
    "failed": "fill:#fbdcdc,stroke:#c62828",
    "waiting": "fill:#e3f4fb,stroke:#0277bd,stroke-dasharray:4",
}


def to_mermaid(definition: SagaDefinition) -> str:
    """Render a saga definition as a Mermaid flowchart.

    Args:
        definition: A ``SagaBase`` subclass, or a compiled flow (returned by
            ``SagaOrchestrator.define``, or by ``manager.flow(name)``).

    Returns:
        Mermaid text starting with ``flowchart TD``.

    Raises:
        SagaDefinitionError: a ``SagaBase`` subclass that breaks a definition rule.
        TypeError: ``definition`` is neither.
    """
    return _Renderer(_as_flow(definition), None).render()


def instance_to_mermaid(definition: SagaDefinition, record: SagaRecord) -> str:
    """Render one saga instance: its definition, each step coloured by its status.

    Steps the saga has not entered are ``pending``; a step's label shows its status, its
    attempts and (in cycles) its visits; a compensation node shows whether it ran.

    Args:
        definition: The saga's definition (see :func:`to_mermaid`).
        record: The instance, e.g. from ``await runtime.get(saga_id)``.

    Raises:
        SagaDefinitionError: ``record`` belongs to a saga of another name.
    """
    flow = _as_flow(definition)
    if record.saga_name != flow.name:
        raise SagaDefinitionError(
            f"saga '{record.saga_id}' is a '{record.saga_name}' saga, not '{flow.name}'",
            saga_name=flow.name,
            saga_id=record.saga_id,
        )
    return _Renderer(flow, record).render()


def _as_flow(definition: object) -> Flow:
    if isinstance(definition, Flow):
        return definition
    if isinstance(definition, type) and issubclass(definition, SagaBase):
        return compile_saga(definition, SagaConfig())
    raise TypeError(
        f"expected a SagaBase subclass or a compiled Flow, got {type(definition).__name__}"
    )


def _escape(value: str) -> str:
    """Entity-encode the characters that would be Mermaid or HTML syntax in a label."""
    return (
        value.replace("#", "#35;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", " ")
    )


def _text(value: str) -> str:
    """Quote user text (a saga, step or function name) as a Mermaid label."""
    return f'"{_escape(value)}"'


def _duration(seconds: float) -> str:
    """``90`` -> ``"90s"``, ``7200`` -> ``"2h"``: a short readable duration."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _wait_label(node: FlowStep) -> str:
    """What a step waits for, as an escaped label line (empty when it does not wait)."""
    wait = node.wait
    if wait is None:
        return ""
    parts = []
    if wait.delay is not None:
        parts.append(f"after {_duration(wait.delay)}")
    if wait.signal is not None:
        parts.append(f"waits for signal {wait.signal}")
    if wait.timeout is not None:
        parts.append(f"timeout {_duration(wait.timeout)}")
    return "<br/>" + _escape(", ".join(parts)) if parts else ""


def _callable_name(func: Callable[..., object]) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not isinstance(name, str):
        return type(func).__name__
    return name.rsplit("<locals>.", 1)[-1]


@dataclass
class _Renderer:
    flow: Flow
    record: SagaRecord | None
    lines: list[str] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)
    failure_edges: list[int] = field(default_factory=list)
    edge_count: int = 0
    classes: dict[str, list[str]] = field(default_factory=dict)

    def render(self) -> str:
        flow = self.flow
        self.ids = {name: f"s{index}" for index, name in enumerate(flow.steps)}
        record = self.record
        if record is not None:
            title = f"{flow.name} {record.saga_id}: {record.status.value}"
            self.lines += ["---", f"title: {json.dumps(title, ensure_ascii=False)}", "---"]
        self.lines += ["flowchart TD", f"    %% saga {_text(flow.name)}"]
        self.lines.append(f"    {_START}([{_text('start')}])")
        self.lines.append(f"    {_END}([{_text('end')}])")
        self._edge(_START, "-->", self.ids[flow.entry])
        for node in flow.steps.values():
            if node.parent is None:
                self._node(node, indent="    ")
        for node in flow.steps.values():
            if node.parent is None:
                self._transitions(node)
        self._styles()
        return "\n".join(self.lines) + "\n"

    # ------------------------------------------------------------------ nodes

    def _node(self, node: FlowStep, indent: str) -> None:
        node_id = self.ids[node.name]
        step = self._step(node.name)
        label = f'"{_escape(node.name)}{self._status_label(node, step)}"'
        if node.is_group:
            group_label = f'"{_escape(node.name)} (parallel){self._status_label(node, step)}"'
            self.lines.append(f"{indent}subgraph {node_id} [{group_label}]")
            for child in node.children:
                self._node(child, indent + "    ")
            self.lines.append(f"{indent}end")
        else:
            wait = _wait_label(node)
            label = f'"{_escape(node.name)}{wait}{self._status_label(node, step)}"'
            self.lines.append(f"{indent}{node_id}[{label}]")
        self._mark(node_id, self._status(step, node))
        if node.compensation is not None:
            undo_id = f"{node_id}_undo"
            undo = f"undo: {_callable_name(node.compensation)}"
            self.lines.append(f"{indent}{undo_id}[/{_text(undo)}/]")
            self._edge(node_id, "-.->", undo_id, label="compensate", indent=indent)
            self._mark(undo_id, self._compensation_status(step))

    def _step(self, name: str) -> SagaStepRecord | None:
        return None if self.record is None else self.record.steps.get(name)

    def _status(self, step: SagaStepRecord | None, node: FlowStep | None = None) -> str | None:
        if self.record is None:
            return None
        if node is not None and self._parked_at(node):
            return "waiting"
        return "pending" if step is None else step.status.value

    def _parked_at(self, node: FlowStep) -> bool:
        record = self.record
        return (
            record is not None
            and record.waiting is not None
            and record.waiting.step == node.name
            and not record.is_terminal
        )

    def _compensation_status(self, step: SagaStepRecord | None) -> str | None:
        if self.record is None:
            return None
        if step is None:
            return "pending"
        status = step.status
        if status is SagaStepStatus.COMPENSATED:
            return "compensated"
        if status is SagaStepStatus.COMPENSATING:
            return "compensating"
        if status is SagaStepStatus.FAILED and step.compensation_error is not None:
            return "failed"
        return "pending"

    def _status_label(self, node: FlowStep, step: SagaStepRecord | None) -> str:
        """The status line appended to a step's (escaped) label, in the instance view."""
        record = self.record
        if record is None:
            return ""
        if step is None:
            upcoming = record.current_step == node.name and not record.is_terminal
            return "<br/>pending (next)" if upcoming else "<br/>pending"
        parts = [step.status.value]
        wait = record.waiting
        if wait is not None and self._parked_at(node):
            until = "" if wait.until is None else f" until {wait.until:%Y-%m-%d %H:%M:%S}Z"
            what = f"signal {wait.signal}" if wait.kind == "signal" else wait.kind
            parts = [f"waiting for {what}{until}"]
        if not node.is_group and step.attempts:
            parts.append(f"{step.attempts} attempt{'s' if step.attempts != 1 else ''}")
        if step.visits > 1:
            parts.append(f"visit {step.visits}")
        return "<br/>" + ", ".join(parts)

    def _mark(self, node_id: str, status: str | None) -> None:
        if status is not None:
            self.classes.setdefault(status, []).append(node_id)

    # ------------------------------------------------------------------ edges

    def _edge(
        self, source: str, arrow: str, target: str, *, label: str = "", indent: str = "    "
    ) -> int:
        text = f"|{_text(label)}|" if label else ""
        self.lines.append(f"{indent}{source} {arrow}{text} {target}")
        self.edge_count += 1
        return self.edge_count - 1

    def _transitions(self, node: FlowStep) -> None:
        node_id = self.ids[node.name]
        target = node.next
        if target is None:
            self._edge(node_id, "-->", _END)
        elif isinstance(target, str):
            self._edge(node_id, "-->", self.ids[target])
        else:
            choice_id = f"{node_id}_next"
            name = _callable_name(target)
            self.lines.append(f"    {choice_id}{{{_text(name + '?')}}}")
            self._edge(node_id, "-->", choice_id)
            if isinstance(target, ConditionalTransition):
                for option in target.targets:
                    chosen = _END if option is None else self.ids[option]
                    self._edge(choice_id, "-->", chosen, label=option or "end")
            else:
                self.lines.append(f"    %% {choice_id}: the next step is chosen at run time")
        if node.on_failure is not None:
            edge = self._edge(node_id, "-.->", self.ids[node.on_failure], label="on failure")
            self.failure_edges.append(edge)

    # ------------------------------------------------------------------ styles

    def _styles(self) -> None:
        lines = self.lines
        lines.append("    classDef compensation fill:#f7f0ff,stroke:#7b5ea7,stroke-dasharray:3")
        undo_ids = [f"{self.ids[n.name]}_undo" for n in self.flow.steps.values() if n.compensation]
        if self.record is None and undo_ids:
            lines.append(f"    class {','.join(undo_ids)} compensation")
        if self.failure_edges:
            edges = ",".join(str(index) for index in self.failure_edges)
            lines.append(f"    linkStyle {edges} stroke:#c62828,color:#c62828")
        record = self.record
        if record is None:
            return
        for status, style in _STATUS_STYLES.items():
            lines.append(f"    classDef {status} {style}")
        if record.is_terminal:
            self._mark(_END, record.status.value)
        for status, node_ids in self.classes.items():
            lines.append(f"    class {','.join(node_ids)} {status}")
