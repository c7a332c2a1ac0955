"""Defining sequential sagas: ``SagaBase``, ``@saga_step``, registration (SPEC section 2)."""

from __future__ import annotations

from typing import Any

import pytest

from lexigram.events.sagas.base import SagaBase, compile_saga, saga_step
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.errors import SagaDefinitionError
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import WAIT

CONFIG = SagaConfig(retry_delay_seconds=0)


class ThreeSteps(SagaBase):
    name = "three"

    @saga_step("first")
    async def first(self, ctx: SagaContext) -> None:
        ctx["order"] = [*ctx.get("order", []), "first"]

    @saga_step("first", compensation=True)
    async def undo_first(self, ctx: SagaContext) -> None:
        return None

    @saga_step("second")
    async def second(self, ctx: SagaContext) -> None:
        ctx["order"] = [*ctx["order"], "second"]

    @saga_step("third")
    async def third(self, ctx: SagaContext) -> None:
        ctx["order"] = [*ctx["order"], "third"]


def order_of(saga_class: type[SagaBase]) -> tuple[str, ...] | None:
    return compile_saga(saga_class, CONFIG).linear


def definition_error(saga_class: type[SagaBase]) -> SagaDefinitionError:
    with pytest.raises(SagaDefinitionError) as info:
        SagaManager(config=CONFIG).register(saga_class)
    return info.value


# --------------------------------------------------------------------------- saga_step


def test_saga_step_marks_without_wrapping() -> None:
    """The decorator returns the method itself, still callable."""

    async def step(self: Any, ctx: SagaContext) -> None:
        return None

    assert saga_step("s")(step) is step


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_retries", -1), ("retry_delay", -0.5), ("timeout", -1.0), ("timeout", 0)],
)
def test_saga_step_rejects_negative_settings(option: str, value: float) -> None:
    """A negative retry count, delay or timeout (or a zero timeout) is a definition error."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(SagaDefinitionError, match=option):
        saga_step("s", **options)


def test_saga_step_rejects_nan_delay() -> None:
    """A NaN delay is a definition error naming the setting."""
    with pytest.raises(SagaDefinitionError, match="retry_delay"):
        saga_step("s", retry_delay=float("nan"))


def test_saga_step_rejects_bool_retries() -> None:
    """``max_retries=True`` is not a count."""
    with pytest.raises(SagaDefinitionError, match="max_retries"):
        saga_step("s", max_retries=True)


@pytest.mark.parametrize("name", ["", "   "])
def test_saga_step_rejects_empty_name(name: str) -> None:
    """A step needs a non-empty name."""
    with pytest.raises(SagaDefinitionError, match="name"):
        saga_step(name)


def test_saga_step_error_names_the_step() -> None:
    """A bad setting's error carries the step name."""
    with pytest.raises(SagaDefinitionError) as info:
        saga_step("charge", max_retries=-1)
    assert info.value.step_name == "charge"
    assert "charge" in str(info.value)


async def test_bad_saga_step_settings_store_nothing() -> None:
    """A definition refused for a bad setting never reaches the store."""
    store = InMemorySagaStore()
    manager = SagaManager(store, config=CONFIG)

    def define() -> type[SagaBase]:
        class Bad(SagaBase):
            name = "bad"

            @saga_step("s", max_retries=-3)
            async def s(self, ctx: SagaContext) -> None:
                return None

        return Bad

    with pytest.raises(SagaDefinitionError):
        manager.register(define())
    assert manager.registered == ()
    assert await store.list() == []


def test_step_settings_fall_back_to_config() -> None:
    """``None`` settings take ``max_retries_per_step`` / ``retry_delay_seconds``."""

    class Defaults(SagaBase):
        name = "defaults"

        @saga_step("s")
        async def s(self, ctx: SagaContext) -> None:
            return None

    policy = compile_saga(Defaults, SagaConfig(max_retries_per_step=7, retry_delay_seconds=2.5))
    assert policy.steps["s"].policy.max_retries == 7
    assert policy.steps["s"].policy.retry_delay == 2.5
    assert policy.steps["s"].policy.timeout is None


def test_step_settings_override_config() -> None:
    """Explicit decorator settings win over the config."""

    class Tuned(SagaBase):
        name = "tuned"

        @saga_step("s", max_retries=1, retry_delay=0.25, timeout=3)
        async def s(self, ctx: SagaContext) -> None:
            return None

    policy = compile_saga(Tuned, SagaConfig(max_retries_per_step=7)).steps["s"].policy
    assert (policy.max_retries, policy.retry_delay, policy.timeout) == (1, 0.25, 3.0)


def test_compensation_has_its_own_settings() -> None:
    """A compensation's decorator settings apply to the compensation only."""

    class Tuned(SagaBase):
        name = "tuned"

        @saga_step("s", max_retries=5)
        async def s(self, ctx: SagaContext) -> None:
            return None

        @saga_step("s", compensation=True, max_retries=1)
        async def undo(self, ctx: SagaContext) -> None:
            return None

    step = compile_saga(Tuned, CONFIG).steps["s"]
    assert step.policy.max_retries == 5
    assert step.compensation_policy.max_retries == 1


# --------------------------------------------------------------------------- order


def test_steps_run_in_definition_order() -> None:
    """Step order is the order of definition in the class."""
    assert order_of(ThreeSteps) == ("first", "second", "third")


def test_definition_order_not_alphabetical() -> None:
    """Order follows the source, not method names."""

    class Backwards(SagaBase):
        name = "backwards"

        @saga_step("zulu")
        async def z(self, ctx: SagaContext) -> None:
            return None

        @saga_step("alpha")
        async def a(self, ctx: SagaContext) -> None:
            return None

    assert order_of(Backwards) == ("zulu", "alpha")


def test_base_class_steps_come_first() -> None:
    """A subclass's new steps follow its base classes' steps."""

    class Extended(ThreeSteps):
        name = "extended"

        @saga_step("fourth")
        async def fourth(self, ctx: SagaContext) -> None:
            return None

    assert order_of(Extended) == ("first", "second", "third", "fourth")


def test_redefined_step_is_replaced_in_place() -> None:
    """A subclass redefining a step name keeps the step's position."""

    class Replaced(ThreeSteps):
        name = "replaced"

        @saga_step("fourth")
        async def fourth(self, ctx: SagaContext) -> None:
            return None

        @saga_step("second")
        async def other_second(self, ctx: SagaContext) -> None:
            ctx["order"] = [*ctx["order"], "second (new)"]

    assert order_of(Replaced) == ("first", "second", "third", "fourth")


async def test_replacement_runs_instead_of_the_base_step() -> None:
    """The subclass's version of a step is the one that runs."""

    class Replaced(ThreeSteps):
        name = "replaced"

        @saga_step("second")
        async def other_second(self, ctx: SagaContext) -> None:
            ctx["order"] = [*ctx["order"], "second (new)"]

    manager = SagaManager(config=CONFIG)
    manager.register(Replaced)
    record = await manager.execute("replaced", timeout=WAIT)
    assert record.data["order"] == ["first", "second (new)", "third"]
    await manager.close()


async def test_overriding_a_method_by_name_replaces_the_step() -> None:
    """Overriding the decorated method itself replaces that step."""

    class Overridden(ThreeSteps):
        name = "overridden"

        @saga_step("second")
        async def second(self, ctx: SagaContext) -> None:
            ctx["order"] = [*ctx["order"], "overridden"]

    manager = SagaManager(config=CONFIG)
    manager.register(Overridden)
    record = await manager.execute("overridden", timeout=WAIT)
    assert record.data["order"] == ["first", "overridden", "third"]
    await manager.close()


async def test_step_without_compensation_is_allowed() -> None:
    """A step with no compensation stays COMPLETED when the saga compensates."""

    class Final(SagaBase):
        name = "final"

        @saga_step("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            return None

        @saga_step("notify")
        async def notify(self, ctx: SagaContext) -> None:
            return None

        @saga_step("charge")
        async def charge(self, ctx: SagaContext) -> None:
            raise ValueError("declined")

        @saga_step("reserve", compensation=True)
        async def release(self, ctx: SagaContext) -> None:
            return None

    manager = SagaManager(config=CONFIG)
    manager.register(Final)
    record = await manager.execute("final", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["notify"].status is SagaStepStatus.COMPLETED
    assert record.steps["reserve"].status is SagaStepStatus.COMPENSATED
    await manager.close()


# --------------------------------------------------------------------------- definition errors


@pytest.mark.parametrize("name", ["", "  "])
def test_empty_name_is_refused(name: str) -> None:
    """An empty ``name`` raises, saying it must be set and naming the class."""

    class Nameless(SagaBase):
        @saga_step("s")
        async def s(self, ctx: SagaContext) -> None:
            return None

    Nameless.name = name
    error = definition_error(Nameless)
    assert "must be set" in str(error)
    assert "Nameless" in str(error)


def test_missing_name_is_refused() -> None:
    """A class that never sets ``name`` raises, saying it must be set."""

    class Unnamed(SagaBase):
        @saga_step("s")
        async def s(self, ctx: SagaContext) -> None:
            return None

    error = definition_error(Unnamed)
    assert "must be set" in str(error)
    assert "Unnamed" in str(error)


def test_no_steps_is_refused() -> None:
    """A saga without steps raises, naming the class."""

    class Empty(SagaBase):
        name = "empty"

    assert "Empty" in str(definition_error(Empty))


def test_duplicate_actions_are_refused() -> None:
    """Two actions with one name raise, naming class and step."""

    class Twice(SagaBase):
        name = "twice"

        @saga_step("charge")
        async def one(self, ctx: SagaContext) -> None:
            return None

        @saga_step("charge")
        async def two(self, ctx: SagaContext) -> None:
            return None

    error = definition_error(Twice)
    assert "Twice" in str(error)
    assert "charge" in str(error)
    assert error.step_name == "charge"


def test_duplicate_compensations_are_refused() -> None:
    """Two compensations with one name raise, naming class and step."""

    class TwoUndos(SagaBase):
        name = "two_undos"

        @saga_step("charge")
        async def charge(self, ctx: SagaContext) -> None:
            return None

        @saga_step("charge", compensation=True)
        async def refund(self, ctx: SagaContext) -> None:
            return None

        @saga_step("charge", compensation=True)
        async def refund_again(self, ctx: SagaContext) -> None:
            return None

    error = definition_error(TwoUndos)
    assert "TwoUndos" in str(error)
    assert "charge" in str(error)


def test_compensation_without_action_is_refused() -> None:
    """A compensation with no matching action raises, naming class and step."""

    class Orphan(SagaBase):
        name = "orphan"

        @saga_step("charge")
        async def charge(self, ctx: SagaContext) -> None:
            return None

        @saga_step("ship", compensation=True)
        async def unship(self, ctx: SagaContext) -> None:
            return None

    error = definition_error(Orphan)
    assert "Orphan" in str(error)
    assert "ship" in str(error)


def test_sync_step_is_refused() -> None:
    """A step that is not ``async def`` raises, naming class and step."""

    class Sync(SagaBase):
        name = "sync"

        @saga_step("charge")  # type: ignore[type-var]
        def charge(self, ctx: SagaContext) -> None:
            return None

    error = definition_error(Sync)
    assert "Sync" in str(error)
    assert "charge" in str(error)
    assert "async" in str(error)


def test_sync_compensation_is_refused() -> None:
    """A compensation that is not ``async def`` raises too."""

    class SyncUndo(SagaBase):
        name = "sync_undo"

        @saga_step("charge")
        async def charge(self, ctx: SagaContext) -> None:
            return None

        @saga_step("charge", compensation=True)  # type: ignore[type-var]
        def refund(self, ctx: SagaContext) -> None:
            return None

    error = definition_error(SyncUndo)
    assert "SyncUndo" in str(error)
    assert "charge" in str(error)


def test_step_with_extra_parameter_is_refused() -> None:
    """A step taking more than ``(self, ctx)`` raises, naming class and step."""

    class Extra(SagaBase):
        name = "extra"

        @saga_step("charge")
        async def charge(self, ctx: SagaContext, amount: int) -> None:
            return None

    error = definition_error(Extra)
    assert "Extra" in str(error)
    assert "charge" in str(error)
    assert "(self, ctx)" in str(error)


def test_step_without_ctx_is_refused() -> None:
    """A step taking only ``self`` raises."""

    class NoCtx(SagaBase):
        name = "no_ctx"

        @saga_step("charge")
        async def charge(self) -> None:
            return None

    error = definition_error(NoCtx)
    assert "NoCtx" in str(error)
    assert "charge" in str(error)


def test_step_with_var_args_is_refused() -> None:
    """A step taking ``*args`` does not take exactly ``(self, ctx)``."""

    class Star(SagaBase):
        name = "star"

        @saga_step("charge")
        async def charge(self, *args: Any) -> None:
            return None

    assert "charge" in str(definition_error(Star))


def test_registering_a_non_saga_class_is_a_type_error() -> None:
    """Only ``SagaBase`` subclasses can be registered."""
    with pytest.raises(TypeError):
        SagaManager().register(object)  # type: ignore[type-var]


# --------------------------------------------------------------------------- registration


def test_register_returns_the_class() -> None:
    """``register`` returns its argument, so it can decorate a class."""
    manager = SagaManager(config=CONFIG)
    assert manager.register(ThreeSteps) is ThreeSteps
    assert manager.registered == ("three",)


def test_registering_the_same_class_twice_is_a_no_op() -> None:
    """A second registration of one class changes nothing."""
    manager = SagaManager(config=CONFIG)
    manager.register(ThreeSteps)
    manager.register(ThreeSteps)
    assert manager.registered == ("three",)


def test_registering_another_class_under_a_taken_name_is_refused() -> None:
    """A different class with an already registered name raises ``SagaDefinitionError``."""

    class Impostor(SagaBase):
        name = "three"

        @saga_step("s")
        async def s(self, ctx: SagaContext) -> None:
            return None

    manager = SagaManager(config=CONFIG)
    manager.register(ThreeSteps)
    with pytest.raises(SagaDefinitionError, match="three"):
        manager.register(Impostor)


class Payments:
    """A service handed to the saga through its constructor."""

    def __init__(self) -> None:
        self.charged: list[str] = []


class InjectedSaga(SagaBase):
    name = "injected"
    instances = 0

    def __init__(self, payments: Payments) -> None:
        self.payments = payments
        InjectedSaga.instances += 1

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> None:
        self.payments.charged.append(ctx["order_id"])


async def test_factory_builds_the_instance_with_services() -> None:
    """``register(factory=...)`` lets a saga receive services by constructor."""
    payments = Payments()
    manager = SagaManager(config=CONFIG)
    manager.register(InjectedSaga, factory=lambda: InjectedSaga(payments))
    await manager.execute("injected", {"order_id": "o-1"}, timeout=WAIT)
    assert payments.charged == ["o-1"]
    await manager.close()


async def test_factory_is_called_once_per_run() -> None:
    """Each run gets a fresh instance from the factory."""
    calls: list[int] = []
    payments = Payments()

    def factory() -> InjectedSaga:
        calls.append(1)
        return InjectedSaga(payments)

    manager = SagaManager(config=CONFIG)
    manager.register(InjectedSaga, factory=factory)
    await manager.execute("injected", {"order_id": "o-1"}, timeout=WAIT)
    await manager.execute("injected", {"order_id": "o-2"}, timeout=WAIT)
    assert len(calls) == 2
    await manager.close()


async def test_without_factory_the_class_is_called_with_no_arguments() -> None:
    """Without a factory, each run instantiates the class."""
    built: list[object] = []

    class Plain(SagaBase):
        name = "plain"

        def __init__(self) -> None:
            built.append(self)

        @saga_step("s")
        async def s(self, ctx: SagaContext) -> None:
            ctx["self_id"] = id(self)

    manager = SagaManager(config=CONFIG)
    manager.register(Plain)
    first = await manager.execute("plain", timeout=WAIT)
    second = await manager.execute("plain", timeout=WAIT)
    assert len(built) == 2
    assert first.data["self_id"] == id(built[0])
    assert second.data["self_id"] == id(built[1])
    await manager.close()


def test_compile_saga_gives_a_linear_flow() -> None:
    """A compiled saga chains its steps and keeps the class as its source."""
    flow = compile_saga(ThreeSteps, CONFIG)
    assert flow.name == "three"
    assert flow.entry == "first"
    assert flow.source is ThreeSteps
    assert [flow.steps[name].next for name in ("first", "second", "third")] == [
        "second",
        "third",
        None,
    ]
    assert flow.steps["first"].compensation is not None
    assert flow.steps["second"].compensation is None


@pytest.mark.parametrize("factory", [5, "InjectedSaga", object()])
def test_a_factory_that_is_not_callable_is_refused_at_register(factory: Any) -> None:
    """``register(A, factory=5)`` is a ``TypeError`` naming the factory, nothing registered."""
    manager = SagaManager(config=CONFIG)
    with pytest.raises(TypeError, match="factory"):
        manager.register(InjectedSaga, factory=factory)
    assert manager.registered == ()
