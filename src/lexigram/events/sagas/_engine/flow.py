"""The compiled form of a saga definition that the engine runs: a graph of steps.

Both front-ends compile into this one shape. A sequential ``SagaBase`` subclass becomes a
chain (each step's ``next`` is the following step); an orchestrated definition becomes a
graph with conditional transitions, failure jumps and parallel groups. The engine knows
nothing else about where a flow came from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lexigram.events.sagas.config import SagaConfig, check_count, check_seconds
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.errors import SagaDefinitionError
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepStatus

__all__ = [
    "MAX_SIGNAL_NAME",
    "Flow",
    "FlowStep",
    "RetryPolicy",
    "StepCallable",
    "Transition",
    "WaitPolicy",
    "align_cursor",
    "check_resumable",
    "is_signal_name",
    "resolve_policy",
    "resolve_wait",
    "validate_flow",
]

StepCallable = Callable[[Any, SagaContext], Awaitable[object]]
"""``(saga_instance, ctx) -> awaitable outcome``; the instance is ``None`` for flows."""

Transition = str | None | Callable[[SagaContext], "str | None"]
"""Where a step leads: a step name, ``None`` (the end), or a function of the context."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long one step (or compensation) is attempted."""

    max_retries: int
    retry_delay: float
    timeout: float | None


@dataclass(frozen=True, slots=True)
class WaitPolicy:
    """How a step waits before it runs (``wait_for=``, ``wait_timeout=``, ``delay=``).

    Attributes:
        signal: The signal the step waits for (``None``: it waits for none).
        timeout: Seconds the wait may last: for a signal, from when the step was entered
            (after its delay); for a polling step (``retry_after``), from its first poll.
            ``None``: as long as the saga's deadline allows.
        delay: Seconds the step waits, after the previous step completed, before it runs.
    """

    signal: str | None = None
    timeout: float | None = None
    delay: float | None = None


def resolve_wait(
    owner: str,
    step_name: str,
    *,
    wait_for: str | None,
    wait_timeout: float | None,
    delay: float | None,
) -> WaitPolicy | None:
    """Validate a step's wait settings; ``None`` when it does not wait.

    Raises:
        SagaDefinitionError: naming the setting and the step.
    """
    where = f"{owner}: step '{step_name}'"
    if wait_for is not None and not is_signal_name(wait_for):
        raise SagaDefinitionError(
            f"{where}: wait_for must be a signal name (printable text of 1 to "
            f"{MAX_SIGNAL_NAME} characters), got {wait_for!r}",
            step_name=step_name,
        )
    try:
        if wait_timeout is not None:
            check_seconds("wait_timeout", wait_timeout, allow_zero=False, owner=where)
        if delay is not None:
            check_seconds("delay", delay, allow_zero=True, owner=where)
    except (TypeError, ValueError) as exc:
        raise SagaDefinitionError(str(exc), saga_name=owner, step_name=step_name) from None
    if wait_for is None and wait_timeout is None and not delay:
        return None
    return WaitPolicy(
        wait_for,
        None if wait_timeout is None else float(wait_timeout),
        float(delay) if delay else None,
    )


MAX_SIGNAL_NAME = 200
"""The longest signal name (names are stored with every signal and in indexes)."""


def is_signal_name(name: object) -> bool:
    """Whether ``name`` can name a signal: printable text of 1 to 200 characters."""
    return isinstance(name, str) and 0 < len(name) <= MAX_SIGNAL_NAME and name.isprintable()


@dataclass(frozen=True, slots=True)
class FlowStep:
    """One node of a flow: an action with its compensation, or a parallel group."""

    name: str
    action: StepCallable | None
    compensation: StepCallable | None
    policy: RetryPolicy
    compensation_policy: RetryPolicy
    next: Transition = None
    on_failure: str | None = None
    children: tuple[FlowStep, ...] = ()
    parent: str | None = None
    compensate_failed: bool = False
    wait: WaitPolicy | None = None

    @property
    def is_group(self) -> bool:
        """Whether this node runs its children in parallel instead of an action."""
        return bool(self.children)


@dataclass(frozen=True, slots=True)
class Flow:
    """A compiled saga definition.

    Attributes:
        name: The registered saga name.
        steps: Every node by name, parallel children included, in definition order.
        entry: The first node.
        linear: For sequential sagas, the step order; ``None`` for graphs.
        make_instance: Builds the object passed to step callables for one run.
        source: What the flow was compiled from (a class or a flow definition).
        config: The saga type's own configuration (``register(..., config=)``), or
            ``None`` to run with the manager's.
    """

    name: str
    steps: Mapping[str, FlowStep]
    entry: str
    linear: tuple[str, ...] | None
    make_instance: Callable[[], object]
    source: object
    config: SagaConfig | None = None


def resolve_policy(
    owner: str,
    step_name: str,
    config: SagaConfig,
    *,
    max_retries: int | None,
    retry_delay: float | None,
    timeout: float | None,
) -> RetryPolicy:
    """Fill a step's unset retry settings from ``config`` and validate all three."""
    where = f"{owner} step '{step_name}'"
    try:
        if max_retries is not None:
            check_count("max_retries", max_retries, owner=where)
        if retry_delay is not None:
            check_seconds("retry_delay", retry_delay, allow_zero=True, owner=where)
        if timeout is not None:
            check_seconds("timeout", timeout, allow_zero=False, owner=where)
    except (TypeError, ValueError) as exc:
        raise SagaDefinitionError(str(exc), saga_name=owner, step_name=step_name) from None
    return RetryPolicy(
        max_retries=config.max_retries_per_step if max_retries is None else max_retries,
        retry_delay=config.retry_delay_seconds if retry_delay is None else float(retry_delay),
        timeout=None if timeout is None else float(timeout),
    )


def validate_flow(flow: Flow) -> None:
    """Raise ``SagaDefinitionError`` naming the step when ``flow`` cannot run."""
    _check_name("saga name", flow.name, flow.name)
    for name in flow.steps:
        _check_name("step name", name, flow.name)
    if not flow.steps:
        raise SagaDefinitionError(f"saga '{flow.name}' has no steps", saga_name=flow.name)
    if flow.entry not in flow.steps:
        raise SagaDefinitionError(
            f"saga '{flow.name}': entry step '{flow.entry}' is not defined",
            saga_name=flow.name,
            step_name=flow.entry,
        )
    top_level = {name for name, step in flow.steps.items() if step.parent is None}
    for step in flow.steps.values():
        _validate_step(flow.name, step, top_level)


def _check_name(what: str, name: object, saga: str) -> None:
    """Names are stored and put in idempotency keys: printable text, nothing else."""
    if not isinstance(name, str) or not name or not name.isprintable():
        raise SagaDefinitionError(
            f"{what} {name!r} must be a non-empty string of printable characters",
            saga_name=saga if isinstance(saga, str) else None,
        )


def _validate_step(saga: str, step: FlowStep, top_level: set[str]) -> None:
    def fail(problem: str) -> SagaDefinitionError:
        return SagaDefinitionError(
            f"saga '{saga}' step '{step.name}': {problem}", saga_name=saga, step_name=step.name
        )

    if step.is_group and step.action is not None:
        raise fail("a parallel group has no action of its own; give action or parallel")
    if not step.is_group and step.action is None:
        raise fail("has neither an action nor parallel children")
    if step.is_group and step.compensation is not None:
        raise fail("a parallel group cannot have a compensation; give one to each child")
    if step.parent is not None and (step.next is not None or step.on_failure is not None):
        raise fail(
            f"is a child of parallel group '{step.parent}' and cannot have next_step or "
            "on_failure (the group decides where the flow goes)"
        )
    for label, target in (("next_step", step.next), ("on_failure", step.on_failure)):
        if isinstance(target, str) and target not in top_level:
            raise fail(f"{label} '{target}' is not a top-level step of this saga")
        if target is not None and not isinstance(target, str) and not callable(target):
            raise fail(f"{label} must be a step name, None or a function of the context")
    if step.on_failure is not None and not isinstance(step.on_failure, str):
        raise fail("on_failure must be a step name")
    if step.wait is not None and (step.parent is not None or step.is_group):
        raise fail(
            "a parallel group and its children cannot wait (wait_for, wait_timeout, delay): "
            "give the wait to a step before or after the group"
        )


def check_resumable(flow: Flow, record: SagaRecord) -> str | None:
    """Return why ``record``'s progress cannot continue under ``flow``, or ``None``.

    Every recorded step must still exist; for a sequential saga the recorded steps must be
    the definition's first steps in the same order (steps appended after them are fine).
    """
    recorded = list(record.steps)
    missing = [name for name in recorded if name not in flow.steps]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        return f"recorded steps {names} are no longer defined"
    if flow.linear is not None and tuple(recorded) != flow.linear[: len(recorded)]:
        return (
            "recorded step order "
            + " -> ".join(recorded)
            + " no longer matches the definition "
            + " -> ".join(flow.linear)
        )
    if record.current_step is not None and record.current_step not in flow.steps:
        return f"the next step '{record.current_step}' is no longer defined"
    return None


def align_cursor(flow: Flow, record: SagaRecord) -> None:
    """Point a resumed sequential saga at the step after its last recorded one.

    A definition may gain steps after the last recorded step; the stored ``current_step``
    names the step that *was* next, which may no longer be. Graph flows keep theirs.
    """
    if flow.linear is None or record.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
        return
    if not record.steps:
        record.current_step = flow.entry
        return
    recorded = list(record.steps)
    if record.steps[recorded[-1]].status is not SagaStepStatus.COMPLETED:
        record.current_step = recorded[-1]  # the step in flight runs again
        return
    position = len(recorded)
    record.current_step = flow.linear[position] if position < len(flow.linear) else None
