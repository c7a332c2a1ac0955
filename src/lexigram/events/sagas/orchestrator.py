"""``SagaOrchestrator``: sagas defined as state machines, with parallel groups and branches.

A flow is a list of :class:`OrchestratedStep`. The first step is the entry; each step names
where the flow goes next (a step name, ``None`` for the end, or a function of the context),
may jump somewhere else when it fails (``on_failure``), and may be a *parallel group* whose
children run concurrently. ``define()`` checks the definition and compiles it into the same
:class:`~lexigram.events.sagas._engine.flow.Flow` a ``SagaBase`` class compiles into; the shared
engine runs it, so retries, timeouts, persistence, compensation, recovery, leases and
events behave exactly as with :class:`~lexigram.events.sagas.manager.SagaManager`.

Example::

    orchestrator = SagaOrchestrator()
    orchestrator.define(
        "travel",
        [
            OrchestratedStep(
                "book",
                parallel=[
                    OrchestratedStep("flight", action=FlightBooking()),
                    OrchestratedStep("hotel", action=HotelBooking()),
                ],
                next_step=route_on_price,
            ),
            OrchestratedStep("approval", action=ask_manager, next_step="confirm"),
            OrchestratedStep("confirm", action=confirm_trip),
        ],
    )
    record = await orchestrator.execute("travel", {"trip_id": "t-1"})
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from types import FunctionType, MethodType
from typing import Any, Protocol, runtime_checkable

from lexigram.events.sagas._engine.flow import (
    Flow,
    FlowStep,
    StepCallable,
    Transition,
    resolve_policy,
    resolve_wait,
    validate_flow,
)
from lexigram.events.sagas._runtime import SagaRuntime
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.errors import SagaDefinitionError

__all__ = [
    "ConditionalTransition",
    "OrchestratedStep",
    "SagaAction",
    "SagaOrchestrator",
    "StepFunction",
    "transition",
]

StepFunction = Callable[[SagaContext], Awaitable[object]]
"""An ``async def f(ctx)`` usable as a step's action or compensation."""


@runtime_checkable
class SagaAction(Protocol):
    """A participant of an orchestrated saga: something to do and a way to undo it.

    ``execute`` returns what any step may return (``SagaStepResult``, ``Ok``/``Err``, a
    ``dict`` or ``None``); a raised exception is a transient failure unless its type is
    non-retryable. ``compensate`` undoes a completed ``execute``; it is retried on any
    failure, so it must be idempotent. Both receive the saga's context and may pass
    ``ctx.idempotency_key`` to the services they call.
    """

    async def execute(self, ctx: SagaContext) -> object:
        """Perform the step."""
        ...

    async def compensate(self, ctx: SagaContext) -> object:
        """Undo a completed ``execute``."""
        ...


class ConditionalTransition:
    """A ``next_step`` function that declares the steps it may choose.

    Build one with :func:`transition`. Declaring the targets lets ``define()`` check them
    and lets diagrams draw one edge per branch; returning an undeclared name at run time
    fails the step with an error naming it.

    Attributes:
        choose: The function of the context that picks the next step.
        targets: The names it may return (``None`` stands for the end of the flow).
    """

    def __init__(
        self, choose: Callable[[SagaContext], str | None], targets: Sequence[str | None]
    ) -> None:
        self.choose = choose
        self.targets = tuple(targets)
        self.__name__: str = getattr(choose, "__name__", type(choose).__name__)
        self.__qualname__: str = getattr(choose, "__qualname__", self.__name__)

    def __call__(self, ctx: SagaContext) -> str | None:
        """Return the next step chosen for ``ctx``.

        Raises:
            SagaDefinitionError: the function returned a name it did not declare.
        """
        chosen = self.choose(ctx)
        if chosen not in self.targets:
            raise SagaDefinitionError(
                f"transition '{self.__name__}' returned {chosen!r}, which is not one of its "
                "declared targets",
                step_name=chosen if isinstance(chosen, str) else None,
            )
        return chosen

    def __repr__(self) -> str:
        return f"transition({', '.join(map(repr, self.targets))})({self.__qualname__})"


def transition(
    *targets: str | None,
) -> Callable[[Callable[[SagaContext], str | None]], ConditionalTransition]:
    """Declare the steps a conditional ``next_step`` function may choose.

    Example::

        @transition("manager_approval", "confirm")
        def route_on_price(ctx: SagaContext) -> str:
            return "manager_approval" if ctx["total"] > 2000 else "confirm"

    Args:
        *targets: Step names the function may return; ``None`` for the end of the flow.

    Raises:
        SagaDefinitionError: no target is given, or a target is not a string or ``None``.
    """
    if not targets:
        raise SagaDefinitionError("transition() needs at least one target step")
    for target in targets:
        if target is not None and (not isinstance(target, str) or not target):
            raise SagaDefinitionError(
                f"transition() targets must be step names or None, got {target!r}"
            )

    def declare(choose: Callable[[SagaContext], str | None]) -> ConditionalTransition:
        if not callable(choose):
            raise TypeError(f"transition() decorates a function, got {choose!r}")
        return ConditionalTransition(choose, targets)

    return declare


@dataclass(frozen=True, slots=True)
class OrchestratedStep:
    """One step of an orchestrated flow: an action, or a group of parallel children.

    The positional fields are upstream's; the keyword-only ``compensation*`` fields are an
    extension.

    Attributes:
        name: Unique name of the step within its saga (children included).
        action: A :class:`SagaAction` (``execute`` + ``compensate``) or a plain
            ``async def f(ctx)`` (then the step has no compensation unless
            ``compensation`` is given). ``None`` for a parallel group.
        next_step: Where the flow goes after the step completes: a step name, ``None``
            (the end), or a function ``(ctx) -> name | None`` (see :func:`transition`).
            It must depend only on the context, which is persisted.
        on_failure: A step to jump to when this step fails, instead of compensating. The
            failed step stays ``FAILED``; a flow that then reaches its end is ``COMPLETED``.
        parallel: Children run concurrently; the group succeeds when all do. Their outputs
            merge into the group's output in list order. A group has no action.
        max_retries: Retries of a transient failure (default
            ``SagaConfig.max_retries_per_step``).
        retry_delay: Base delay before the first retry, in seconds (default
            ``SagaConfig.retry_delay_seconds``).
        timeout: Limit of each attempt, in seconds; expiry is a transient failure.
        compensation: An ``async def f(ctx)`` undoing a plain-callable ``action``.
        compensation_max_retries: Retries of the compensation (default from the config).
        compensation_retry_delay: Base delay between compensation attempts.
        compensation_timeout: Limit of each compensation attempt, in seconds.
        compensate_failed: Run the compensation also when the action fails (its side
            effect may exist after a lost reply, a timeout, a cancel or a crash loop); the
            compensation sees ``ctx.action_completed`` is ``False``. Needs a compensation.
        wait_for: Park until this signal arrives; the step sees it in ``ctx.signal``
            and ``next_step`` may branch on it (see ``docs/waits.md``).
        wait_timeout: Seconds to wait for the signal (or to keep polling); then the step
            fails with ``failure.kind == "timeout"`` and ``on_failure`` applies.
        delay: Seconds to wait, after the previous step completed, before the step runs.
    """

    name: str
    action: SagaAction | StepFunction | None = None
    next_step: Transition = None
    on_failure: str | None = None
    parallel: Sequence[OrchestratedStep] = field(default_factory=tuple)
    max_retries: int | None = None
    retry_delay: float | None = None
    timeout: float | None = None
    _: KW_ONLY
    compensation: StepFunction | None = None
    compensation_max_retries: int | None = None
    compensation_retry_delay: float | None = None
    compensation_timeout: float | None = None
    compensate_failed: bool = False
    wait_for: str | None = None
    wait_timeout: float | None = None
    delay: float | None = None

    def __post_init__(self) -> None:
        # Upstream passes a list; keep a tuple so the step stays immutable and hashable.
        parallel: object = self.parallel
        if not isinstance(parallel, tuple):
            if isinstance(parallel, str | bytes) or not isinstance(parallel, Sequence):
                raise SagaDefinitionError(
                    f"step '{self.name}': parallel must be a list of OrchestratedStep",
                    step_name=str(self.name),
                )
            object.__setattr__(self, "parallel", tuple(parallel))

    @property
    def is_group(self) -> bool:
        """Whether the step is a parallel group."""
        return bool(self.parallel)


class SagaOrchestrator(SagaRuntime):
    """Runs orchestrated flows: ``define`` them, then ``start``/``execute`` them.

    Takes the same arguments as ``SagaManager`` (``store``, ``config``, ``event_bus``,
    ``worker_id``, ``clock``) and offers the same API (``start``, ``wait``, ``execute``,
    ``get``, ``list``, ``cancel``, ``resume``, ``recover``, ``cleanup``, ``start_on``,
    ``close``); see :class:`~lexigram.events.sagas._runtime.SagaRuntime`.
    """

    def define(
        self,
        name: str,
        steps: Sequence[OrchestratedStep],
        *,
        max_concurrency: int | None = None,
        config: SagaConfig | None = None,
    ) -> Flow:
        """Validate a flow and make it startable under ``name``.

        Args:
            name: The saga name passed to ``start``.
            steps: The flow's steps; the first one is the entry.
            max_concurrency: At most this many sagas of the flow run at once in one
                ``serve()`` worker (no cap beyond ``concurrency`` when omitted).
            config: This flow's own settings instead of the orchestrator's (see
                ``SagaManager.register``).

        Returns:
            The compiled flow (pass it to :func:`~lexigram.events.sagas.diagram.to_mermaid`
            to draw it). Defining the same steps again under the same name is a no-op that
            returns the flow already registered.

        Raises:
            SagaDefinitionError: the definition breaks a rule (naming the step), or a
                different definition is already registered under ``name``.
            ValueError: ``max_concurrency`` is not a positive int.
        """
        own = self._type_config(config)
        flow = compile_flow(name, steps, own or self.config)
        if name in self.registered:
            existing = self.flow(name)
            if existing.source == flow.source:
                return existing
        return self._add_flow(flow, flow.source, max_concurrency, own)


def compile_flow(name: str, steps: Sequence[OrchestratedStep], config: SagaConfig) -> Flow:
    """Validate an orchestrated definition and compile it into a flow graph.

    Args:
        name: The saga name.
        steps: The flow's steps; the first one is the entry.
        config: Supplies the retry defaults of steps that do not set them.

    Raises:
        SagaDefinitionError: naming the saga and the step at fault.
    """
    if not isinstance(name, str) or not name.strip():
        raise SagaDefinitionError(
            f"the saga name must be set to a non-empty string, got {name!r}",
            saga_name=name if isinstance(name, str) else None,
        )
    given: object = steps
    if isinstance(given, str | bytes) or not isinstance(given, Sequence) or not given:
        raise SagaDefinitionError(
            f"saga '{name}' has no steps: define() needs a non-empty list of OrchestratedStep",
            saga_name=name,
        )
    definition = tuple(steps)
    seen: set[str] = set()
    for step in _walk(name, definition):
        _check_step(name, step)
        if step.name in seen:
            raise _error(name, step.name, "is defined twice (step names must be unique)")
        seen.add(step.name)
    nodes: dict[str, FlowStep] = {}
    for step in definition:
        _compile_step(name, step, None, config, nodes)
    flow = Flow(
        name=name,
        # Groups before their children, everything in definition order.
        steps={step.name: nodes[step.name] for step in _walk(name, definition)},
        entry=definition[0].name,
        linear=None,
        make_instance=_no_instance,
        source=definition,
    )
    validate_flow(flow)
    for step in _walk(name, definition):
        _check_declared_targets(flow, step)
    return flow


def _walk(saga: str, steps: Sequence[object]) -> Iterator[OrchestratedStep]:
    """Yield every step, children right after their group (definition order)."""
    for step in steps:
        if not isinstance(step, OrchestratedStep):
            raise SagaDefinitionError(
                f"saga '{saga}': expected an OrchestratedStep, got {type(step).__name__}",
                saga_name=saga,
            )
        yield step
        yield from _walk(saga, step.parallel)


def _error(saga: str, step: str, problem: str) -> SagaDefinitionError:
    return SagaDefinitionError(
        f"saga '{saga}' step '{step}': {problem}", saga_name=saga, step_name=step
    )


def _check_step(saga: str, step: OrchestratedStep) -> None:
    """The rules ``validate_flow`` cannot see once callables are wrapped."""
    name = step.name
    if not isinstance(name, str) or not name.strip():
        raise SagaDefinitionError(
            f"saga '{saga}': every step needs a non-empty name, got {name!r}", saga_name=saga
        )
    if step.is_group:
        if step.action is not None:
            raise _error(saga, name, "a parallel group has no action; give action or parallel")
        tuning = (
            step.max_retries,
            step.retry_delay,
            step.timeout,
            step.compensation,
            step.compensation_max_retries,
            step.compensation_retry_delay,
            step.compensation_timeout,
        )
        if any(value is not None for value in tuning):
            raise _error(
                saga,
                name,
                "a parallel group takes no retries, timeout or compensation; set them on "
                "its children",
            )
        return
    action = step.action
    if action is None:
        raise _error(saga, name, "has neither an action nor parallel children")
    if isinstance(action, type):
        raise _error(saga, name, f"action is the class {action.__name__}; pass an instance")
    if isinstance(action, SagaAction):
        if step.compensation is not None:
            raise _error(
                saga,
                name,
                "its action is a SagaAction, which compensates itself; drop compensation",
            )
        for method in ("execute", "compensate"):
            if not _is_async_callable(getattr(action, method)):
                raise _error(saga, name, f"{type(action).__name__}.{method} must be 'async def'")
    elif not _is_async_callable(action):
        raise _error(
            saga, name, "action must be a SagaAction or an 'async def' function of the context"
        )
    if step.compensation is not None and not _is_async_callable(step.compensation):
        raise _error(saga, name, "compensation must be an 'async def' function of the context")
    if step.on_failure is not None and not isinstance(step.on_failure, str):
        raise _error(saga, name, "on_failure must be a step name")


def _is_async_callable(func: object) -> bool:
    """Whether calling ``func`` returns a coroutine (functions, methods, async ``__call__``)."""
    if inspect.iscoroutinefunction(func):
        return True
    if isinstance(func, FunctionType | MethodType) or not callable(func):
        return False
    # Python 3.11's inspect does not look at an object's async ``__call__``.
    return inspect.iscoroutinefunction(type(func).__call__)


def _compile_step(
    saga: str,
    step: OrchestratedStep,
    parent: str | None,
    config: SagaConfig,
    nodes: dict[str, FlowStep],
) -> FlowStep:
    action = step.action
    if action is None:
        execute: StepCallable | None = None
        undo: StepCallable | None = None
    elif isinstance(action, SagaAction):
        execute = _adapt(action.execute)
        undo = _adapt(action.compensate)
    else:
        execute = _adapt(action)
        undo = None if step.compensation is None else _adapt(step.compensation)
    policy = resolve_policy(
        saga,
        step.name,
        config,
        max_retries=step.max_retries,
        retry_delay=step.retry_delay,
        timeout=step.timeout,
    )
    compensation_policy = resolve_policy(
        saga,
        step.name,
        config,
        max_retries=step.compensation_max_retries,
        retry_delay=step.compensation_retry_delay,
        timeout=step.compensation_timeout,
    )
    if not isinstance(step.compensate_failed, bool):
        raise SagaDefinitionError(
            f"flow '{saga}': step '{step.name}': compensate_failed must be a bool",
            step_name=step.name,
        )
    if step.compensate_failed and undo is None:
        raise SagaDefinitionError(
            f"flow '{saga}': step '{step.name}' has compensate_failed=True but no compensation",
            step_name=step.name,
        )
    node = FlowStep(
        name=step.name,
        action=execute,
        compensation=undo,
        policy=policy,
        compensation_policy=compensation_policy,
        next=step.next_step,
        on_failure=step.on_failure,
        children=tuple(
            _compile_step(saga, child, step.name, config, nodes) for child in step.parallel
        ),
        parent=parent,
        compensate_failed=step.compensate_failed,
        wait=resolve_wait(
            f"flow '{saga}'",
            step.name,
            wait_for=step.wait_for,
            wait_timeout=step.wait_timeout,
            delay=step.delay,
        ),
    )
    nodes[step.name] = node
    return node


def _check_declared_targets(flow: Flow, step: OrchestratedStep) -> None:
    target = step.next_step
    if not isinstance(target, ConditionalTransition):
        return
    node = flow.steps[step.name]
    for name in target.targets:
        if name is not None and (name not in flow.steps or flow.steps[name].parent is not None):
            raise _error(
                flow.name,
                node.name,
                f"next_step may choose '{name}', which is not a top-level step of this saga",
            )


def _adapt(func: StepFunction) -> StepCallable:
    """Wrap ``f(ctx)`` into the engine's ``(instance, ctx)`` shape (the instance is unused)."""

    def call(_instance: object, ctx: SagaContext) -> Awaitable[object]:
        return func(ctx)

    # Keep the user's names on the wrapper: diagrams and logs show them.
    call.__name__ = getattr(func, "__name__", type(func).__name__)
    call.__qualname__ = getattr(func, "__qualname__", call.__name__)
    return call


def _no_instance() -> Any:
    """Orchestrated steps are plain callables: there is no saga object to build."""
    return None
