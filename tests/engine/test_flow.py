"""The compiled flow: ``validate_flow``, ``check_resumable``, ``resolve_policy``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from lexigram.events.sagas._engine.flow import (
    Flow,
    FlowStep,
    RetryPolicy,
    Transition,
    check_resumable,
    resolve_policy,
    validate_flow,
)
from lexigram.events.sagas.base import SagaBase, compile_saga
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.errors import SagaDefinitionError
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.types import SagaStatus
from tests.support.helpers import Script, saga_class, seed_record

POLICY = RetryPolicy(max_retries=0, retry_delay=0.0, timeout=None)
CONFIG = SagaConfig(max_retries_per_step=4, retry_delay_seconds=0.5)


async def action(instance: Any, ctx: SagaContext) -> object:
    return None


def node(
    name: str,
    *,
    next_: Transition = None,
    on_failure: str | None = None,
    children: tuple[FlowStep, ...] = (),
    parent: str | None = None,
    has_action: bool = True,
    compensation: bool = False,
) -> FlowStep:
    return FlowStep(
        name=name,
        action=action if has_action else None,
        compensation=action if compensation else None,
        policy=POLICY,
        compensation_policy=POLICY,
        next=next_,
        on_failure=on_failure,
        children=children,
        parent=parent,
    )


def flow(steps: Mapping[str, FlowStep], entry: str = "a", linear: bool = False) -> Flow:
    return Flow(
        name="f",
        steps=steps,
        entry=entry,
        linear=tuple(steps) if linear else None,
        make_instance=object,
        source=None,
    )


def linear_flow(*names: str) -> Flow:
    saga: type[SagaBase] = saga_class(Script(), names, name="lin")
    return compile_saga(saga, CONFIG)


# --------------------------------------------------------------------------- resolve_policy


def test_resolve_policy_fills_defaults_from_config() -> None:
    """Unset retry settings come from the config."""
    policy = resolve_policy("S", "s", CONFIG, max_retries=None, retry_delay=None, timeout=None)
    assert policy == RetryPolicy(max_retries=4, retry_delay=0.5, timeout=None)


def test_resolve_policy_keeps_explicit_values() -> None:
    """Explicit settings win, including zero."""
    policy = resolve_policy("S", "s", CONFIG, max_retries=0, retry_delay=0, timeout=2)
    assert policy == RetryPolicy(max_retries=0, retry_delay=0.0, timeout=2.0)


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_retries", -1), ("retry_delay", -1.0), ("timeout", 0.0), ("timeout", -2.0)],
)
def test_resolve_policy_rejects_bad_values_naming_the_step(option: str, value: float) -> None:
    """A negative setting is a ``SagaDefinitionError`` naming owner, step and setting."""
    options: dict[str, Any] = {"max_retries": None, "retry_delay": None, "timeout": None}
    options[option] = value
    with pytest.raises(SagaDefinitionError, match=option) as info:
        resolve_policy("OrderSaga", "charge", CONFIG, **options)
    assert info.value.step_name == "charge"
    assert "OrderSaga" in str(info.value)


# --------------------------------------------------------------------------- validate_flow


def test_valid_chain_passes() -> None:
    """A simple chain validates."""
    validate_flow(flow({"a": node("a", next_="b"), "b": node("b")}))


def test_flow_without_steps_is_refused() -> None:
    """A flow needs at least one step."""
    with pytest.raises(SagaDefinitionError, match="no steps"):
        validate_flow(flow({}))


def test_unknown_entry_is_refused() -> None:
    """The entry must be one of the steps."""
    with pytest.raises(SagaDefinitionError, match="'x'"):
        validate_flow(flow({"a": node("a")}, entry="x"))


def test_unknown_next_step_is_refused_naming_it() -> None:
    """A ``next`` naming no step is refused, naming the step and its target."""
    with pytest.raises(SagaDefinitionError, match="'nowhere'") as info:
        validate_flow(flow({"a": node("a", next_="nowhere")}))
    assert info.value.step_name == "a"


def test_unknown_on_failure_target_is_refused() -> None:
    """An ``on_failure`` naming no step is refused."""
    with pytest.raises(SagaDefinitionError, match="on_failure"):
        validate_flow(flow({"a": node("a", on_failure="ghost")}))


def test_group_with_action_is_refused() -> None:
    """A parallel group cannot have an action of its own."""
    child = node("c", parent="g")
    with pytest.raises(SagaDefinitionError, match="parallel"):
        validate_flow(flow({"g": node("g", children=(child,)), "c": child}, entry="g"))


def test_step_without_action_or_children_is_refused() -> None:
    """A step needs an action or parallel children."""
    with pytest.raises(SagaDefinitionError, match="neither"):
        validate_flow(flow({"a": node("a", has_action=False)}))


def test_group_with_compensation_is_refused() -> None:
    """A group's compensations belong to its children."""
    child = node("c", parent="g")
    group = node("g", children=(child,), has_action=False, compensation=True)
    with pytest.raises(SagaDefinitionError, match="compensation"):
        validate_flow(flow({"g": group, "c": child}, entry="g"))


def test_child_with_next_is_refused() -> None:
    """A parallel child cannot choose where the flow goes."""
    child = node("c", parent="g", next_="g")
    group = node("g", children=(child,), has_action=False)
    with pytest.raises(SagaDefinitionError, match="child"):
        validate_flow(flow({"g": group, "c": child}, entry="g"))


def test_next_targeting_a_child_is_refused() -> None:
    """Only top-level steps can be jumped to."""
    child = node("c", parent="g")
    group = node("g", children=(child,), has_action=False)
    start = node("a", next_="c")
    with pytest.raises(SagaDefinitionError, match="top-level"):
        validate_flow(flow({"a": start, "g": group, "c": child}))


def test_non_callable_transition_is_refused() -> None:
    """A transition must be a name, None or a function."""
    with pytest.raises(SagaDefinitionError, match="next_step"):
        validate_flow(flow({"a": node("a", next_=42)}))  # type: ignore[arg-type]


def test_callable_transition_is_accepted() -> None:
    """A function of the context is a valid transition."""
    validate_flow(flow({"a": node("a", next_=lambda ctx: None)}))


# --------------------------------------------------------------------------- check_resumable


def test_same_definition_is_resumable() -> None:
    """Progress of the same steps in the same order can continue."""
    record = seed_record("s", "lin", done=["a"], current="b")
    assert check_resumable(linear_flow("a", "b", "c"), record) is None


def test_appended_steps_are_resumable() -> None:
    """Steps added after the last recorded one are allowed."""
    record = seed_record("s", "lin", done=["a", "b"], current="c")
    assert check_resumable(linear_flow("a", "b", "c", "d"), record) is None


def test_renamed_step_is_not_resumable() -> None:
    """A recorded step that no longer exists blocks the resume, naming it."""
    record = seed_record("s", "lin", done=["a"], current="b")
    problem = check_resumable(linear_flow("a2", "b", "c"), record)
    assert problem is not None
    assert "'a'" in problem


def test_removed_step_is_not_resumable() -> None:
    """Removing a recorded step blocks the resume."""
    record = seed_record("s", "lin", done=["a", "b"], current="c")
    assert check_resumable(linear_flow("a", "c"), record) is not None


def test_reordered_steps_are_not_resumable() -> None:
    """Recorded steps in another order block the resume."""
    record = seed_record("s", "lin", done=["a", "b"], current="c")
    problem = check_resumable(linear_flow("b", "a", "c"), record)
    assert problem is not None
    assert "order" in problem


def test_step_inserted_before_recorded_ones_is_not_resumable() -> None:
    """A new step inserted before recorded progress changes the order."""
    record = seed_record("s", "lin", done=["a", "b"], current="c")
    assert check_resumable(linear_flow("a", "new", "b", "c"), record) is not None


def test_missing_next_step_is_not_resumable() -> None:
    """A next step that is no longer defined blocks the resume."""
    record = seed_record("s", "lin", done=["a"], current="gone")
    problem = check_resumable(linear_flow("a", "b"), record)
    assert problem is not None
    assert "gone" in problem


def test_pending_record_without_steps_is_resumable() -> None:
    """A saga that never ran a step resumes under any definition with its entry."""
    record = seed_record("s", "lin", current="a", status=SagaStatus.PENDING)
    assert check_resumable(linear_flow("a", "b"), record) is None


@pytest.mark.parametrize("name", ["pay\ud800", "pay\nment", ""])
def test_step_names_must_be_printable(name: str) -> None:
    """A step name that could not be stored or printed is a ``SagaDefinitionError``."""
    manager = SagaManager()
    with pytest.raises(SagaDefinitionError, match="step name"):
        manager.register(saga_class(Script(), steps=(name,)))


def test_saga_names_must_be_printable() -> None:
    """A saga name with a lone surrogate is refused at registration."""
    cls = saga_class(Script(), name="orders")
    cls.name = "orders\udcff"
    manager = SagaManager()
    with pytest.raises(SagaDefinitionError, match="saga name"):
        manager.register(cls)
