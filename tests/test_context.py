"""``SagaContext`` and ``SagaStepResult``: what a step receives and returns (SPEC section 3)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest

from lexigram.events.sagas.base import SagaBase, saga_step
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Script,
    await_crash,
    crash_first,
    manager_for,
    returning,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0)


def make_ctx() -> SagaContext:
    return SagaContext("s-1", "orders", data={"order_id": "o-1"})


# --------------------------------------------------------------------------- the dataclass


def test_context_is_a_dataclass_with_documented_fields() -> None:
    """``SagaContext`` has saga_id, saga_name, data, step_results and metadata."""
    names = {f.name for f in dataclasses.fields(SagaContext)}
    assert {"saga_id", "saga_name", "data", "step_results", "metadata"} <= names


def test_context_defaults_are_empty_and_independent() -> None:
    """data, step_results and metadata default to fresh empty dicts."""
    first, second = SagaContext("a", "n"), SagaContext("b", "n")
    first.data["k"] = 1
    assert (second.data, second.step_results, second.metadata) == ({}, {}, {})


def test_getitem_reads_data() -> None:
    """``ctx["k"]`` reads ``ctx.data["k"]``."""
    assert make_ctx()["order_id"] == "o-1"


def test_getitem_missing_key_raises_key_error() -> None:
    """A missing key raises ``KeyError``."""
    with pytest.raises(KeyError):
        make_ctx()["missing"]


def test_setitem_writes_data() -> None:
    """``ctx["k"] = v`` writes ``ctx.data``."""
    ctx = make_ctx()
    ctx["amount"] = 5
    assert ctx.data == {"order_id": "o-1", "amount": 5}


def test_delitem_removes_from_data() -> None:
    """``del ctx["k"]`` removes the key from ``ctx.data``."""
    ctx = make_ctx()
    del ctx["order_id"]
    assert ctx.data == {}


def test_contains_checks_data() -> None:
    """``"k" in ctx`` tests ``ctx.data``."""
    ctx = make_ctx()
    assert "order_id" in ctx
    assert "amount" not in ctx


def test_get_returns_value_or_default() -> None:
    """``ctx.get`` returns the value, the default, or ``None``."""
    ctx = make_ctx()
    assert ctx.get("order_id") == "o-1"
    assert ctx.get("missing", 42) == 42
    assert ctx.get("missing") is None


def test_correlation_id_defaults_to_saga_id() -> None:
    """Without metadata the correlation id is the saga id."""
    assert make_ctx().correlation_id == "s-1"


def test_correlation_id_reads_metadata() -> None:
    """``metadata["correlation_id"]`` is the correlation id when set."""
    ctx = SagaContext("s-1", "orders", metadata={"correlation_id": "trace-9"})
    assert ctx.correlation_id == "trace-9"


# --------------------------------------------------------------------------- SagaStepResult


def test_step_result_defaults() -> None:
    """``SagaStepResult(success)`` has an empty output, no error, not retryable."""
    result = SagaStepResult(success=True)
    assert (result.output, result.error, result.retryable) == ({}, None, False)


def test_step_result_ok_without_output() -> None:
    """``SagaStepResult.Ok()`` is a success with an empty output."""
    assert SagaStepResult.Ok() == SagaStepResult(success=True, output={})


def test_step_result_ok_with_output() -> None:
    """``SagaStepResult.Ok(output)`` carries the output."""
    assert SagaStepResult.Ok({"id": 1}).output == {"id": 1}


def test_step_result_fail_is_not_retryable_by_default() -> None:
    """``fail(error)`` is a failure that is not retried."""
    result = SagaStepResult.fail("declined")
    assert (result.success, result.error, result.retryable) == (False, "declined", False)


def test_step_result_fail_can_be_retryable() -> None:
    """``fail(error, retryable=True)`` asks for a retry."""
    assert SagaStepResult.fail("busy", retryable=True).retryable is True


# --------------------------------------------------------------------------- while a step runs


async def test_step_sees_its_name_and_attempt() -> None:
    """``ctx.step_name`` and the 1-based ``ctx.attempt`` describe the running step."""
    script = Script()
    seen: list[tuple[str | None, int]] = []

    async def record(ctx: SagaContext) -> object:
        seen.append((ctx.step_name, ctx.attempt))
        if ctx.attempt < 3:
            raise ConnectionError("flaky")
        return None

    script.behaviours["b"] = record
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert seen == [("b", 1), ("b", 2), ("b", 3)]
    await manager.close()


async def test_idempotency_key_is_stable_across_retries() -> None:
    """Every attempt of one step sees the same idempotency key."""
    script = Script()
    keys: list[str | None] = []

    async def record(ctx: SagaContext) -> object:
        keys.append(ctx.idempotency_key)
        if ctx.attempt < 3:
            raise ConnectionError("flaky")
        return None

    script.behaviours["b"] = record
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert keys[0] is not None
    await manager.close()


async def test_idempotency_keys_differ_between_steps_and_sagas() -> None:
    """Each step of each saga has its own key."""
    script = Script()
    keys: list[str | None] = []

    async def record(ctx: SagaContext) -> object:
        keys.append(ctx.idempotency_key)
        return None

    script.behaviours = {"a": record, "b": record}
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    await manager.execute("scripted", saga_id="s-2", timeout=WAIT)
    assert len(set(keys)) == 4
    await manager.close()


async def test_compensation_has_its_own_idempotency_key() -> None:
    """A compensation's key differs from its step's key and is stable across its retries."""
    script = Script()
    step_keys: list[str | None] = []
    undo_keys: list[str | None] = []

    async def act(ctx: SagaContext) -> object:
        step_keys.append(ctx.idempotency_key)
        return None

    async def undo(ctx: SagaContext) -> object:
        undo_keys.append(ctx.idempotency_key)
        if len(undo_keys) < 2:
            raise ConnectionError("flaky")
        return None

    script.behaviours = {"a": act, "b": returning(SagaStepResult.fail("no"))}
    script.undo_behaviours["a"] = undo
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert len(undo_keys) == 2
    assert undo_keys[0] == undo_keys[1]
    assert undo_keys[0] is not None
    assert undo_keys[0] != step_keys[0]
    await manager.close()


async def test_idempotency_key_survives_a_resume_in_a_new_manager() -> None:
    """After a crash, the step re-run by another manager sees the same key."""
    store = InMemorySagaStore()
    keys: list[str | None] = []
    script = Script()
    crash = crash_first()

    async def record(ctx: SagaContext) -> object:
        keys.append(ctx.idempotency_key)
        return await crash(ctx)

    script.behaviours["b"] = record
    first = manager_for(script, store=store, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=store, config=FAST, worker_id="w")
    assert await second.recover() == 1
    assert (await second.wait(saga_id, timeout=WAIT)).status is SagaStatus.COMPLETED
    assert len(keys) == 2
    assert keys[0] == keys[1]
    await first.close()
    await second.close()


async def test_correlation_id_defaults_to_saga_id_in_steps() -> None:
    """Without ``correlation_id`` a step sees the saga id as correlation id."""
    script = Script()
    seen: list[object] = []

    async def record(ctx: SagaContext) -> object:
        seen.append(ctx.metadata["correlation_id"])
        return None

    script.behaviours["a"] = record
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", saga_id="s-7", timeout=WAIT)
    assert seen == ["s-7"]
    await manager.close()


async def test_correlation_id_can_be_set_at_start() -> None:
    """``start(..., correlation_id=...)`` sets ``metadata["correlation_id"]``."""
    script = Script()
    seen: list[object] = []

    async def record(ctx: SagaContext) -> object:
        seen.append(ctx.metadata["correlation_id"])
        return None

    script.behaviours["a"] = record
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted", correlation_id="trace-1")
    record_ = await manager.wait(saga_id, timeout=WAIT)
    assert seen == ["trace-1"]
    assert record_.metadata["correlation_id"] == "trace-1"
    await manager.close()


async def test_saga_id_and_name_are_on_the_context() -> None:
    """The context names its saga instance and definition."""
    script = Script()
    seen: list[tuple[str, str]] = []

    async def record(ctx: SagaContext) -> object:
        seen.append((ctx.saga_id, ctx.saga_name))
        return None

    script.behaviours["a"] = record
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    assert seen == [("s-1", "scripted")]
    await manager.close()


# --------------------------------------------------------------------------- data


async def test_data_changes_reach_later_steps() -> None:
    """A value a step writes to ``ctx`` is read by the next step."""
    script = Script()
    seen: list[object] = []

    async def write(ctx: SagaContext) -> object:
        ctx["reservation"] = "r-1"
        return None

    async def read(ctx: SagaContext) -> object:
        seen.append(ctx["reservation"])
        return None

    script.behaviours = {"a": write, "b": read}
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert seen == ["r-1"]
    await manager.close()


async def test_data_changes_are_persisted_with_the_step() -> None:
    """When the next step starts, the store already holds the previous step's data change."""
    script = Script()
    store = InMemorySagaStore()
    durable: list[tuple[object, SagaStepStatus]] = []

    async def write(ctx: SagaContext) -> object:
        ctx["reservation"] = "r-1"
        return None

    async def look(ctx: SagaContext) -> object:
        record = await stored(store, ctx.saga_id)
        durable.append((record.data.get("reservation"), record.steps["a"].status))
        return None

    script.behaviours = {"a": write, "b": look}
    manager = manager_for(script, store=store, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert durable == [("r-1", SagaStepStatus.COMPLETED)]
    await manager.close()


async def test_data_changes_reach_compensations() -> None:
    """A compensation sees the data its step (and later steps) wrote."""
    script = Script()
    seen: list[object] = []

    async def write(ctx: SagaContext) -> object:
        ctx["reservation"] = "r-1"
        return None

    async def undo(ctx: SagaContext) -> object:
        seen.append(ctx["reservation"])
        return None

    script.behaviours = {"a": write, "b": returning(SagaStepResult.fail("no"))}
    script.undo_behaviours["a"] = undo
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert seen == ["r-1"]
    await manager.close()


async def test_data_changes_reach_a_resumed_run() -> None:
    """After a crash, the resumed run sees the data the completed steps wrote."""
    store = InMemorySagaStore()
    script = Script()
    seen: list[object] = []
    crash = crash_first()

    async def write(ctx: SagaContext) -> object:
        ctx["reservation"] = "r-1"
        return None

    async def read(ctx: SagaContext) -> object:
        seen.append(ctx.get("reservation"))
        return await crash(ctx)

    script.behaviours = {"a": write, "b": read}
    first = manager_for(script, store=store, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=store, config=FAST, worker_id="w")
    await second.recover()
    record = await second.wait(saga_id, timeout=WAIT)
    assert seen == ["r-1", "r-1"]
    assert record.data["reservation"] == "r-1"
    await first.close()
    await second.close()


async def test_unserialisable_value_fails_the_step_naming_the_key() -> None:
    """A step storing a non-JSON value fails, is not retried, and the error names the key."""
    script = Script()

    async def bad(ctx: SagaContext) -> object:
        ctx["when"] = datetime(2024, 1, 1)  # noqa: DTZ001 - any non-JSON value
        return None

    script.behaviours["b"] = bad
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert script.count("b") == 1
    assert record.steps["b"].status is SagaStepStatus.FAILED
    assert "'when'" in (record.steps["b"].error or "")
    assert script.undone() == ["a"]
    await manager.close()


async def test_unserialisable_value_is_not_stored() -> None:
    """The rejected value never reaches the store; the durable data stays JSON."""
    script = Script()

    async def bad(ctx: SagaContext) -> object:
        ctx["when"] = {1, 2}
        return None

    script.behaviours["b"] = bad
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert "when" not in record.data
    assert record.data["a"] == "done"
    await manager.close()


async def test_step_results_hold_earlier_outputs() -> None:
    """``ctx.step_results[name]`` holds each completed step's output."""
    script = Script()
    seen: list[dict[str, object]] = []

    async def read(ctx: SagaContext) -> object:
        seen.append(dict(ctx.step_results))
        return None

    script.behaviours = {"a": returning({"reservation": "r-1"}), "c": read}
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert seen == [{"a": {"reservation": "r-1"}, "b": {"step": "b"}}]
    await manager.close()


async def test_context_mapping_access_inside_steps() -> None:
    """Mapping access works on the context a step receives."""
    script = Script()

    async def use(ctx: SagaContext) -> object:
        ctx["x"] = 1
        assert "x" in ctx
        del ctx["order_id"]
        return {"got": ctx.get("missing", "default")}

    script.behaviours["a"] = use
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", {"order_id": "o-1"}, timeout=WAIT)
    assert record.data["x"] == 1
    assert "order_id" not in record.data
    assert record.steps["a"].output == {"got": "default"}
    await manager.close()


async def test_compensation_sees_compensating_flag() -> None:
    """While a compensation runs, ``ctx.compensating`` is true and step_name is its step."""
    script = Script()
    seen: list[tuple[str | None, bool]] = []

    async def undo(ctx: SagaContext) -> object:
        seen.append((ctx.step_name, ctx.compensating))
        return None

    script.behaviours["b"] = returning(SagaStepResult.fail("no"))
    script.undo_behaviours["a"] = undo
    manager = manager_for(script, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert seen == [("a", True)]
    await manager.close()


# --------------------------------------------------------------------------- failure text


@pytest.mark.parametrize("error", [404, {"code": 1}, object(), 2.5])
def test_fail_refuses_what_is_not_text_or_an_exception(error: Any) -> None:
    """``fail(404)`` is a ``TypeError`` at once, naming the type: never an unreadable row."""
    with pytest.raises(TypeError, match=type(error).__name__):
        SagaStepResult.fail(error)


def test_fail_with_an_exception_stores_its_type_and_message() -> None:
    """``fail(ValueError("card declined"))`` keeps ``"ValueError: card declined"``."""
    assert SagaStepResult.fail(ValueError("card declined")).error == "ValueError: card declined"


def test_a_failure_built_directly_with_a_number_is_refused() -> None:
    """``SagaStepResult(success=False, error=404)`` is refused the same way."""
    with pytest.raises(TypeError, match="int"):
        SagaStepResult(success=False, error=404)  # type: ignore[arg-type]


async def test_a_step_failing_with_a_number_fails_readably_on_every_store() -> None:
    """A step calling ``fail(404)`` fails with a ``TypeError`` record that every store reads."""

    class Failing(SagaBase):
        name = "failing"

        @saga_step("charge")
        async def charge(self, ctx: SagaContext) -> SagaStepResult:
            return SagaStepResult.fail(404)  # type: ignore[arg-type]

    manager = SagaManager(config=SagaConfig(retry_delay_seconds=0))
    manager.register(Failing)
    record = await manager.execute("failing", timeout=5)
    assert record.steps["charge"].error is not None
    assert record.steps["charge"].error.startswith("TypeError: ")
    assert all(isinstance(text, str) for text in record.steps["charge"].attempt_errors)
    assert [r.saga_id for r in await manager.list()] == [record.saga_id]
    await manager.close()
