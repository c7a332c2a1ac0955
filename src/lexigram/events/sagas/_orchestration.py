"""Compiling an orchestrated definition (``SagaOrchestrator.define``) into a flow.

Checks every :class:`~lexigram.events.sagas.orchestrator.OrchestratedStep` (names, actions,
targets, policies, waits) and builds the :class:`~lexigram.events.sagas._engine.flow.Flow`
the shared engine runs. Kept apart from the front-end's vocabulary because it changes for
its own reasons (the rules of a definition).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterator, Sequence
from types import FunctionType, MethodType
from typing import Any

from lexigram.events.sagas._engine.flow import (
    Flow,
    FlowStep,
    StepCallable,
    resolve_policy,
    resolve_wait,
    validate_flow,
)
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.errors import SagaDefinitionError
from lexigram.events.sagas.orchestrator import (
    ConditionalTransition,
    OrchestratedStep,
    SagaAction,
    StepFunction,
)

__all__ = ["compile_flow"]


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
