"""Sequential sagas: ``SagaBase`` and the ``@saga_step`` decorator.

A saga is a class with a ``name`` and async step methods, each decorated with
``@saga_step(step_name, ...)``. A method decorated with ``compensation=True`` undoes the
step of the same name. Steps run in definition order (base classes first; a subclass that
redefines a step name replaces it in place); compensations run in reverse completion order.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from lexigram.events.sagas._engine.flow import (
    Flow,
    FlowStep,
    StepCallable,
    WaitPolicy,
    resolve_policy,
    resolve_wait,
    validate_flow,
)
from lexigram.events.sagas.config import SagaConfig, check_count, check_seconds
from lexigram.events.sagas.errors import SagaDefinitionError

__all__ = ["SagaBase", "saga_step"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_MARKER = "__saga_step__"


@dataclass(frozen=True, slots=True)
class StepSpec:
    """What ``@saga_step`` attached to a method."""

    name: str
    compensation: bool
    max_retries: int | None
    retry_delay: float | None
    timeout: float | None
    compensate_failed: bool = False
    wait: WaitPolicy | None = None


def saga_step(
    name: str,
    *,
    compensation: bool = False,
    max_retries: int | None = None,
    retry_delay: float | None = None,
    timeout: float | None = None,
    compensate_failed: bool = False,
    wait_for: str | None = None,
    wait_timeout: float | None = None,
    delay: float | None = None,
) -> Callable[[F], F]:
    """Mark an async method ``(self, ctx)`` as a saga step or as a step's compensation.

    Args:
        name: The step's unique name within its saga.
        compensation: Mark the method as the compensating action of step ``name``.
        max_retries: Retries of a transient failure (default ``SagaConfig.max_retries_per_step``).
        retry_delay: Base delay before the first retry, in seconds (default
            ``SagaConfig.retry_delay_seconds``); later retries back off exponentially.
        timeout: Limit of each attempt, in seconds; expiry is a transient failure.
        compensate_failed: Run the step's compensation also when its action fails (a
            lost reply, a timeout, a cancel or a crash loop may have left its side effect
            behind); the compensation sees ``ctx.action_completed`` is ``False``. Needs a
            compensation; set on the action, not on the compensation.
        wait_for: Park the saga until a signal of this name arrives
            (``manager.signal``); the step then runs with its payload in ``ctx.signal``.
            A parked saga holds no worker memory; a serving worker takes it up again.
        wait_timeout: Seconds the step may wait for its signal (or keep polling with
            ``SagaStepResult.retry_after``); when they pass first, the step fails with
            ``failure.kind == "timeout"``.
        delay: Seconds to wait, after the previous step completed, before the step runs
            (parked, like a signal wait).

    Raises:
        SagaDefinitionError: The name is empty or a setting is negative or not a number.
    """
    if not isinstance(name, str) or not name.strip():
        raise SagaDefinitionError(f"saga_step name must be a non-empty string, got {name!r}")
    where = f"saga_step('{name}')"
    try:
        if max_retries is not None:
            check_count("max_retries", max_retries, owner=where)
        if retry_delay is not None:
            check_seconds("retry_delay", retry_delay, allow_zero=True, owner=where)
        if timeout is not None:
            check_seconds("timeout", timeout, allow_zero=False, owner=where)
    except (TypeError, ValueError) as exc:
        raise SagaDefinitionError(str(exc), step_name=name) from None
    if not isinstance(compensation, bool):
        raise SagaDefinitionError(f"{where}: compensation must be a bool", step_name=name)
    if not isinstance(compensate_failed, bool):
        raise SagaDefinitionError(f"{where}: compensate_failed must be a bool", step_name=name)
    if compensate_failed and compensation:
        raise SagaDefinitionError(
            f"{where}: compensate_failed belongs on the step's action, not its compensation",
            step_name=name,
        )
    wait = resolve_wait(
        "saga_step", name, wait_for=wait_for, wait_timeout=wait_timeout, delay=delay
    )
    if wait is not None and compensation:
        raise SagaDefinitionError(
            f"{where}: wait_for, wait_timeout and delay belong on the step's action, not its "
            "compensation",
            step_name=name,
        )
    spec = StepSpec(name, compensation, max_retries, retry_delay, timeout, compensate_failed, wait)

    def mark(func: F) -> F:
        setattr(func, _MARKER, spec)
        return func

    return mark


class SagaBase:
    """Base class of sequential sagas.

    Set ``name`` and decorate async methods with ``@saga_step``. An instance is created
    for every run (by the class, or by the ``factory`` given to ``register``), so a saga
    may take its services in ``__init__``.
    """

    name: ClassVar[str] = ""


def compile_saga(
    saga_class: type[SagaBase],
    config: SagaConfig,
    factory: Callable[[], SagaBase] | None = None,
) -> Flow:
    """Validate ``saga_class`` and compile it into a linear flow.

    Raises:
        SagaDefinitionError: naming the class and step, for every rule of SPEC section 2.
    """
    if not (isinstance(saga_class, type) and issubclass(saga_class, SagaBase)):
        raise TypeError(f"expected a SagaBase subclass, got {saga_class!r}")
    if factory is not None and not callable(factory):
        raise TypeError(
            f"factory for saga class {saga_class.__name__} must be callable (it builds the "
            f"instance used for one run), got {type(factory).__name__}"
        )
    class_name = saga_class.__qualname__
    saga_name = getattr(saga_class, "name", "")
    if not isinstance(saga_name, str) or not saga_name.strip():
        raise SagaDefinitionError(
            f"{class_name}.name must be set to a non-empty string", saga_name=class_name
        )
    actions, compensations = _collect_steps(saga_class, class_name)
    if not actions:
        raise SagaDefinitionError(
            f"{class_name} ('{saga_name}') has no @saga_step methods", saga_name=saga_name
        )
    for step_name in compensations:
        if step_name not in actions:
            raise SagaDefinitionError(
                f"{class_name}: compensation for step '{step_name}' has no matching action",
                saga_name=saga_name,
                step_name=step_name,
            )
    order = tuple(actions)
    steps = {
        step_name: _flow_step(
            class_name,
            config,
            actions[step_name],
            compensations.get(step_name),
            order[index + 1] if index + 1 < len(order) else None,
        )
        for index, step_name in enumerate(order)
    }
    flow = Flow(
        name=saga_name,
        steps=steps,
        entry=order[0],
        linear=order,
        make_instance=factory if factory is not None else saga_class,
        source=saga_class,
    )
    validate_flow(flow)
    return flow


_Found = tuple[StepCallable, StepSpec]


def _flow_step(
    class_name: str,
    config: SagaConfig,
    action: _Found,
    compensation: _Found | None,
    following: str | None,
) -> FlowStep:
    """Compile one ``@saga_step`` action (and its compensation, if any) into a flow node."""
    func, spec = action
    undo_spec = None if compensation is None else compensation[1]
    if spec.compensate_failed and compensation is None:
        raise SagaDefinitionError(
            f"{class_name}: step '{spec.name}' has compensate_failed=True but no compensation",
            step_name=spec.name,
        )
    return FlowStep(
        name=spec.name,
        action=func,
        compensation=None if compensation is None else compensation[0],
        policy=resolve_policy(
            class_name,
            spec.name,
            config,
            max_retries=spec.max_retries,
            retry_delay=spec.retry_delay,
            timeout=spec.timeout,
        ),
        compensation_policy=resolve_policy(
            class_name,
            spec.name,
            config,
            max_retries=None if undo_spec is None else undo_spec.max_retries,
            retry_delay=None if undo_spec is None else undo_spec.retry_delay,
            timeout=None if undo_spec is None else undo_spec.timeout,
        ),
        next=following,
        compensate_failed=spec.compensate_failed,
        wait=spec.wait,
    )


def _collect_steps(
    saga_class: type[SagaBase], class_name: str
) -> tuple[dict[str, _Found], dict[str, _Found]]:
    """Return actions and compensations by step name, as ``(function, spec)`` pairs.

    The functions are the plain ``(self, ctx)`` functions; the engine calls them with the
    run's saga instance, which spares a bound-method lookup per step.
    """
    actions: dict[str, _Found | None] = {}
    compensations: dict[str, _Found | None] = {}
    for klass in reversed(saga_class.__mro__):
        seen_here: set[tuple[str, bool]] = set()
        for attr, value in vars(klass).items():
            spec = getattr(value, _MARKER, None)
            if not isinstance(spec, StepSpec):
                continue
            target = compensations if spec.compensation else actions
            if getattr(saga_class, attr) is not value:
                # Overridden further down: the step keeps this position, and takes its
                # definition from the override (or disappears if that is no step).
                target.setdefault(spec.name, None)
                continue
            kind = "compensation" if spec.compensation else "action"
            if (spec.name, spec.compensation) in seen_here:
                raise SagaDefinitionError(
                    f"{class_name}: two {kind}s are named '{spec.name}'",
                    saga_name=class_name,
                    step_name=spec.name,
                )
            seen_here.add((spec.name, spec.compensation))
            _check_signature(class_name, attr, value, spec)
            # Assigning an existing key keeps its position: a redefined step stays in place.
            target[spec.name] = (value, spec)
    return (
        {name: found for name, found in actions.items() if found is not None},
        {name: found for name, found in compensations.items() if found is not None},
    )


def _check_signature(class_name: str, attr: str, func: object, spec: StepSpec) -> None:
    where = f"{class_name}.{attr} (step '{spec.name}')"
    if not inspect.iscoroutinefunction(func):
        raise SagaDefinitionError(
            f"{where} must be an 'async def' method", saga_name=class_name, step_name=spec.name
        )
    parameters = list(inspect.signature(func).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) != 2 or any(p.kind not in positional for p in parameters):
        raise SagaDefinitionError(
            f"{where} must take exactly (self, ctx)", saga_name=class_name, step_name=spec.name
        )
