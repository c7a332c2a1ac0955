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

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol, runtime_checkable

from lexigram.events.sagas._engine.flow import (
    Flow,
    Transition,
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
        # Imported here: the compiler needs this module's classes (no import cycle).
        from lexigram.events.sagas._orchestration import compile_flow

        flow = compile_flow(name, steps, own or self.config)
        if name in self.registered:
            existing = self.flow(name)
            if existing.source == flow.source:
                return existing
        return self._add_flow(flow, flow.source, max_concurrency, own)
