"""The seed document's example code, run as written, and the documented import paths.

``OrderFulfillmentSaga`` below is the seed's class text (method names, decorators and
bodies as given); ``inventory``, ``payment`` and ``order`` are tiny fake services at module
level, as the seed's code expects. SPEC section 1 lists the import paths checked here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.context import Err, SagaContext, SagaStepResult
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import WAIT

# --------------------------------------------------------------------------- fake services


class Inventory:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def reserve(self, order_id: str) -> SagaStepResult:
        self.calls.append(f"reserve {order_id}")
        return SagaStepResult.Ok({"reservation": f"res-{order_id}"})

    async def release(self, order_id: str) -> SagaStepResult:
        self.calls.append(f"release {order_id}")
        return SagaStepResult.Ok()


class Payment:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.declined = False

    async def charge(self, order_id: str, amount: int) -> SagaStepResult:
        self.calls.append(f"charge {order_id} {amount}")
        if self.declined:
            return SagaStepResult.fail("card declined")
        return SagaStepResult.Ok({"payment_id": f"pay-{order_id}"})

    async def refund(self, order_id: str) -> SagaStepResult:
        self.calls.append(f"refund {order_id}")
        return SagaStepResult.Ok()


class Orders:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def confirm(self, order_id: str) -> SagaStepResult:
        self.calls.append(f"confirm {order_id}")
        return SagaStepResult.Ok({"confirmed": True})


inventory = Inventory()
payment = Payment()
order = Orders()


@pytest.fixture(autouse=True)
def fresh_services() -> Iterator[None]:
    """Reset the module-level fake services around each test."""
    for service in (inventory, payment, order):
        service.calls.clear()
    payment.declined = False
    yield
    payment.declined = False


# --------------------------------------------------------------------------- the seed's class


class OrderFulfillmentSaga(SagaBase):
    name = "order_fulfillment"

    @saga_step("reserve_inventory", max_retries=3)
    async def reserve(self, ctx: SagaContext) -> SagaStepResult:
        return await inventory.reserve(ctx["order_id"])

    @saga_step("reserve_inventory", compensation=True)
    async def release(self, ctx: SagaContext) -> SagaStepResult:
        return await inventory.release(ctx["order_id"])

    @saga_step("charge_payment", max_retries=2)
    async def charge(self, ctx: SagaContext) -> SagaStepResult:
        return await payment.charge(ctx["order_id"], ctx["amount"])

    @saga_step("charge_payment", compensation=True)
    async def refund(self, ctx: SagaContext) -> SagaStepResult:
        return await payment.refund(ctx["order_id"])

    @saga_step("confirm_order")
    async def confirm(self, ctx: SagaContext) -> SagaStepResult:
        return await order.confirm(ctx["order_id"])


# --------------------------------------------------------------------------- usage as written


async def test_seed_usage_runs_the_order_to_completion() -> None:
    """The seed's ``# Usage`` lines start a saga that reserves, charges and confirms."""
    manager = SagaManager()
    manager.register(OrderFulfillmentSaga)
    saga_id = await manager.start("order_fulfillment", {"order_id": "ord-1", "amount": 500})
    record = await manager.wait(saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert list(record.steps) == ["reserve_inventory", "charge_payment", "confirm_order"]
    assert inventory.calls == ["reserve ord-1"]
    assert payment.calls == ["charge ord-1 500"]
    assert order.calls == ["confirm ord-1"]
    assert record.steps["charge_payment"].output == {"payment_id": "pay-ord-1"}
    await manager.close()


async def test_declined_payment_calls_release_only() -> None:
    """If charge_payment fails, the saga calls release (step 1's compensation) and no refund."""
    payment.declined = True
    manager = SagaManager()
    manager.register(OrderFulfillmentSaga)
    saga_id = await manager.start("order_fulfillment", {"order_id": "ord-1", "amount": 500})
    record = await manager.wait(saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert inventory.calls == ["reserve ord-1", "release ord-1"]
    assert payment.calls == ["charge ord-1 500"]
    assert order.calls == []
    assert record.steps["reserve_inventory"].status is SagaStepStatus.COMPENSATED
    assert record.steps["charge_payment"].status is SagaStepStatus.FAILED
    assert "confirm_order" not in record.steps
    await manager.close()


async def test_seed_saga_runs_on_the_documented_store() -> None:
    """``store = InMemorySagaStore()`` as in the seed, handed to the manager."""
    store = InMemorySagaStore()
    manager = SagaManager(store)
    manager.register(OrderFulfillmentSaga)
    saga_id = await manager.start("order_fulfillment", {"order_id": "ord-2", "amount": 5})
    await manager.wait(saga_id, timeout=WAIT)
    record = await store.load(saga_id)
    assert record is not None
    assert record.saga_name == "order_fulfillment"
    assert record.created_at is not None
    assert record.completed_at is not None
    await manager.close()


async def test_err_result_compensates_previous_steps_in_reverse() -> None:
    """Seed: a step returning ``Err`` is FAILED, earlier steps undone in reverse, COMPENSATED."""
    undone: list[str] = []

    class ErrSaga(SagaBase):
        name = "err_saga"

        @saga_step("one")
        async def one(self, ctx: SagaContext) -> SagaStepResult:
            return SagaStepResult.Ok()

        @saga_step("one", compensation=True)
        async def undo_one(self, ctx: SagaContext) -> None:
            undone.append("one")

        @saga_step("two")
        async def two(self, ctx: SagaContext) -> SagaStepResult:
            return SagaStepResult.Ok()

        @saga_step("two", compensation=True)
        async def undo_two(self, ctx: SagaContext) -> None:
            undone.append("two")

        @saga_step("three")
        async def three(self, ctx: SagaContext) -> Err[str]:
            return Err("out of stock")

    manager = SagaManager()
    manager.register(ErrSaga)
    record = await manager.execute("err_saga", timeout=WAIT)
    assert record.steps["three"].status is SagaStepStatus.FAILED
    assert undone == ["two", "one"]
    assert record.status is SagaStatus.COMPENSATED
    await manager.close()


async def test_correlation_id_line_of_the_seed_works_in_a_step() -> None:
    """``ctx["correlation_id"] = str(saga_id)`` stores the id in the saga's data."""

    class Traced(SagaBase):
        name = "traced"

        @saga_step("tag")
        async def tag(self, ctx: SagaContext) -> None:
            saga_id = ctx.saga_id
            ctx["correlation_id"] = str(saga_id)

    manager = SagaManager()
    manager.register(Traced)
    record = await manager.execute("traced", saga_id="s-42", timeout=WAIT)
    assert record.data["correlation_id"] == "s-42"
    await manager.close()


async def test_seed_step_settings_are_applied() -> None:
    """The seed's ``max_retries`` on reserve/charge are the compiled retry limits."""
    from lexigram.events.sagas.base import compile_saga
    from lexigram.events.sagas.config import SagaConfig

    flow = compile_saga(OrderFulfillmentSaga, SagaConfig())
    assert flow.steps["reserve_inventory"].policy.max_retries == 3
    assert flow.steps["charge_payment"].policy.max_retries == 2
    assert flow.steps["confirm_order"].policy.max_retries == SagaConfig().max_retries_per_step
    assert flow.steps["confirm_order"].compensation is None


def test_seed_first_snippet_decorator_arguments_are_accepted() -> None:
    """``@saga_step("reserve_inventory", max_retries=3, retry_delay=1.0)`` decorates a step."""

    class Snippet(SagaBase):
        name = "snippet"

        @saga_step("reserve_inventory", max_retries=3, retry_delay=1.0)
        async def reserve(self, ctx: SagaContext) -> SagaStepResult:
            return await inventory.reserve(ctx["order_id"])

    manager = SagaManager()
    assert manager.register(Snippet) is Snippet


# --------------------------------------------------------------------------- import paths


IMPORT_TABLE = {
    "lexigram.events.sagas.base": ["SagaBase", "saga_step"],
    "lexigram.events.sagas.context": ["SagaContext", "SagaStepResult", "Ok", "Err", "Result"],
    "lexigram.events.sagas.manager": ["SagaManager", "SagaManagerProtocol"],
    "lexigram.events.sagas.orchestrator": ["SagaOrchestrator", "OrchestratedStep", "SagaAction"],
    "lexigram.events.sagas.store": [
        "SagaStore",
        "InMemorySagaStore",
        "SagaRecord",
        "SagaStepRecord",
    ],
    "lexigram.events.sagas.types": ["SagaStatus", "SagaStepStatus", "SagaRecord", "SagaStepRecord"],
    "lexigram.events.sagas.config": ["SagaConfig"],
    "lexigram.events.config": ["SagaConfig"],
    "lexigram.events.sagas.errors": [
        "SagaError",
        "SagaDefinitionError",
        "SagaNotFoundError",
        "ConcurrencyConflictError",
        "SagaTimeoutError",
        "NonRetryableError",
        "CompensationFailedError",
    ],
    "lexigram.events.sagas.events": [
        "SagaStarted",
        "SagaStepCompleted",
        "SagaStepFailed",
        "SagaCompensating",
        "SagaStepCompensated",
        "SagaCompleted",
        "SagaCompensated",
        "SagaFailed",
    ],
    "lexigram.events.sagas.sqlite": ["SQLiteSagaStore"],
    "lexigram.events": ["EventBusProtocol", "DomainEvent", "InMemoryEventBus"],
}


@pytest.mark.parametrize(("module_name", "names"), sorted(IMPORT_TABLE.items()))
def test_documented_import_path(module_name: str, names: list[str]) -> None:
    """Every name of the SPEC section 1 table imports from its documented module."""
    module = importlib.import_module(module_name)
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


def test_postgres_store_import_path() -> None:
    """``PostgresSagaStore`` imports from its module (asyncpg is a dev dependency)."""
    pytest.importorskip("asyncpg")
    module = importlib.import_module("lexigram.events.sagas.postgres")
    assert hasattr(module, "PostgresSagaStore")


def test_store_and_types_share_record_classes() -> None:
    """``SagaRecord`` from ``store`` and from ``types`` is one class."""
    from lexigram.events.sagas import store, types

    assert store.SagaRecord is types.SagaRecord
    assert store.SagaStepRecord is types.SagaStepRecord


def test_store_protocol_is_a_typing_protocol() -> None:
    """``SagaStore`` is a ``typing.Protocol``."""
    from lexigram.events.sagas.store import SagaStore

    assert getattr(SagaStore, "_is_protocol", False) is True


def test_package_all_holds_every_table_name_sorted() -> None:
    """``lexigram.events.sagas.__all__`` is sorted and holds every sagas name of the table."""
    import lexigram.events.sagas as sagas

    exported = set(sagas.__all__)
    wanted = {
        name
        for module, names in IMPORT_TABLE.items()
        if module.startswith("lexigram.events.sagas")
        for name in names
    } | {"PostgresSagaStore"}
    assert sorted(wanted - exported) == []
    assert len(sagas.__all__) == len(exported)
    assert list(sagas.__all__) == sorted(sagas.__all__, key=lambda name: (not name.isupper(), name))


def test_lexigram_is_a_namespace_package() -> None:
    """``lexigram/`` has no ``__init__.py`` (PEP 420) and ``py.typed`` ships."""
    import lexigram
    import lexigram.events

    assert getattr(lexigram, "__file__", None) is None
    package_dir = Path(lexigram.events.__file__).parent
    assert not (package_dir.parent / "__init__.py").exists()
    assert (package_dir / "py.typed").is_file()
