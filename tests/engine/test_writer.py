"""The record writer: a value no store can hold fails the step that produced it.

Nothing already stored is lost, on every store (SPEC sections 3 and 10).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import Err, SagaContext, SagaStepResult
from lexigram.events.sagas.errors import SagaStoreUnavailableError
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.store import InMemorySagaStore, SagaStore
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Crash,
    Fault,
    FaultStore,
    Script,
    Tuning,
    await_crash,
    blocking,
    failing_c,
    manager_for,
    raise_each,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus
Behaviour = Callable[[SagaContext], Any]


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    """Each test runs on the in-memory store and on a real SQLite file."""
    made: SagaStore = (
        InMemorySagaStore() if request.param == "memory" else SQLiteSagaStore(tmp_path / "s.db")
    )
    yield made
    await made.close()


async def run_with(
    store: SagaStore, behaviours: dict[str, Behaviour]
) -> tuple[SagaRecord, SagaRecord, Script]:
    """Run the scripted a-b-c saga with ``behaviours``; return (waited, stored, script)."""
    script = Script()
    script.behaviours.update(behaviours)
    manager = manager_for(script, store=store, config=FAST)
    try:
        record = await asyncio.wait_for(manager.execute("scripted", saga_id="s-1"), WAIT)
    finally:
        await manager.close()
    durable = await store.load("s-1")
    assert durable is not None
    return record, durable, script


def setting(key: str, value: object, *, target: str = "data") -> Behaviour:
    async def behave(ctx: SagaContext) -> object:
        getattr(ctx, target)[key] = value
        return {"step": ctx.step_name}

    return behave


def assert_failed_b_and_compensated_a(waited: SagaRecord, durable: SagaRecord) -> None:
    for record in (waited, durable):
        assert record.status is P.COMPENSATED
        assert record.steps["b"].status is T.FAILED
        assert record.steps["a"].status is T.COMPENSATED
        assert record.lease_owner is None  # the terminal write landed
        assert record.failure is not None
        assert record.failure.kind == "step_error"
        assert record.failure.step == "b"
    assert durable.version == waited.version


async def test_non_json_metadata_fails_the_step_naming_it(store: SagaStore) -> None:
    """``ctx.metadata["trace"] = {1, 2}`` fails the step naming metadata and the key (defect 1)."""
    waited, durable, script = await run_with(
        store, {"b": setting("trace", {1, 2}, target="metadata")}
    )
    assert_failed_b_and_compensated_a(waited, durable)
    assert "metadata key 'trace'" in (durable.steps["b"].error or "")
    assert "trace" not in durable.metadata
    assert durable.steps["a"].output == {"step": "a"}  # a completed step's output is kept
    assert script.calls == ["a:1", "b:1", "undo a"]


async def test_exception_given_to_fail_is_stored_as_text(store: SagaStore) -> None:
    """``fail(ValueError("card declined"))`` ends compensated, in the store too (defect 2)."""

    async def decline(ctx: SagaContext) -> object:
        return SagaStepResult.fail(ValueError("card declined"))

    waited, durable, _ = await run_with(store, {"b": decline})
    assert durable.status is P.COMPENSATED
    assert durable.steps["b"].error == "ValueError: card declined"
    assert durable.failure is not None
    assert durable.failure.kind == "step_failed"
    assert waited.status is P.COMPENSATED


async def test_huge_int_in_context_fails_the_step_naming_the_key(store: SagaStore) -> None:
    """An int JSON cannot print (over 4,300 digits) fails the step naming the key (defect 2)."""
    waited, durable, _ = await run_with(store, {"b": setting("big", 10**5000)})
    assert_failed_b_and_compensated_a(waited, durable)
    assert "data key 'big'" in (durable.steps["b"].error or "")
    assert "big" not in durable.data


async def test_lone_surrogate_fails_the_step_on_every_store(store: SagaStore) -> None:
    """Text UTF-8 cannot encode fails the step the same way in memory and on disk."""
    waited, durable, _ = await run_with(store, {"b": setting("name", "bad \ud800 text")})
    assert_failed_b_and_compensated_a(waited, durable)
    assert "name" not in durable.data


async def test_int_keys_are_refused_at_the_step(store: SagaStore) -> None:
    """``ctx.data[1] = "one"`` fails the step: data keeps one shape everywhere (defect 6)."""

    async def int_key(ctx: SagaContext) -> object:
        ctx.data[1] = "one"  # type: ignore[index]
        return None

    waited, durable, _ = await run_with(store, {"b": int_key})
    assert_failed_b_and_compensated_a(waited, durable)
    assert "data key '1'" in (durable.steps["b"].error or "")
    assert all(type(key) is str for key in waited.data)
    assert "1" not in durable.data


async def test_nested_int_keys_are_refused_at_the_step(store: SagaStore) -> None:
    """A non-str key deep inside a value is refused too."""
    waited, durable, _ = await run_with(store, {"b": setting("nested", {"x": {2: "two"}})})
    assert_failed_b_and_compensated_a(waited, durable)
    assert "data key 'nested'" in (durable.steps["b"].error or "")


async def test_a_refused_value_is_put_back_to_its_stored_value(store: SagaStore) -> None:
    """A key overwritten with a bad value gets its last durable value back, not dropped."""
    waited, durable, _ = await run_with(store, {"b": setting("a", {1, 2})})
    assert durable.data["a"] == "done"  # step a's value, as stored with a's completion
    assert waited.data["a"] == "done"


async def test_assigning_ctx_data_is_saved(store: SagaStore) -> None:
    """``ctx.data = {...}`` is what later steps, the store and resumed runs see (defect 6)."""

    async def replace(ctx: SagaContext) -> object:
        ctx.data = {"replaced": True}
        return None

    seen: list[dict[str, Any]] = []

    async def look(ctx: SagaContext) -> object:
        seen.append(dict(ctx.data))
        return None

    waited, durable, _ = await run_with(store, {"a": replace, "b": look})
    assert seen == [{"replaced": True}]
    assert durable.status is P.COMPLETED
    assert durable.data == {"replaced": True, "c": "done"}
    assert waited.data == durable.data


async def test_assigning_a_non_dict_to_ctx_data_fails_the_step(store: SagaStore) -> None:
    """``ctx.data = 5`` fails the step and the context keeps its stored data."""

    async def replace(ctx: SagaContext) -> object:
        ctx.data = 5  # type: ignore[assignment]
        return None

    waited, durable, _ = await run_with(store, {"b": replace})
    assert_failed_b_and_compensated_a(waited, durable)
    assert "the context data" in (durable.steps["b"].error or "")
    assert durable.data["a"] == "done"


async def test_a_bad_value_set_before_a_retried_failure_fails_for_good(store: SagaStore) -> None:
    """A failed attempt that will be retried but left a bad value fails, not retried."""
    calls: list[int] = []

    async def flaky(ctx: SagaContext) -> object:
        calls.append(ctx.attempt)
        ctx["when"] = {1, 2}
        raise ConnectionError("flaky")

    waited, durable, _ = await run_with(store, {"b": flaky})
    assert_failed_b_and_compensated_a(waited, durable)
    assert calls == [1]
    assert "data key 'when'" in (durable.steps["b"].error or "")


async def test_a_compensation_storing_a_bad_value_still_ends_the_saga(store: SagaStore) -> None:
    """A compensation that leaves a bad value: the value is dropped and noted, the saga ends."""
    script = Script()
    script.behaviours["c"] = raise_each(ValueError("no"))

    async def undo_b(ctx: SagaContext) -> object:
        ctx["oops"] = {1}
        return None

    script.undo_behaviours["b"] = undo_b
    manager = manager_for(script, store=store, config=FAST)
    record = await asyncio.wait_for(manager.execute("scripted", saga_id="s-1"), WAIT)
    await manager.close()
    durable = await store.load("s-1")
    assert durable is not None
    assert durable.status is P.COMPENSATED
    assert record.status is P.COMPENSATED
    assert "oops" not in durable.data
    assert "data key 'oops'" in (durable.error or "")
    assert script.undone() == ["b", "a"]


async def test_no_write_is_skipped_after_a_refusal(store: SagaStore) -> None:
    """After a refused value, every later write lands: the stored version keeps rising."""
    manager_store = store
    waited, durable, _ = await run_with(manager_store, {"b": setting("bad", {1})})
    assert durable.version == waited.version
    assert durable.status is waited.status is P.COMPENSATED
    fresh = SagaManager(store, config=FAST)
    assert await fresh.recover() == 0  # nothing left running under an old lease
    await fresh.close()


# --------------------------------------------------------------------------- store outages


async def test_store_outage_mid_saga_does_not_fail_it() -> None:
    """Writes failing with SagaStoreUnavailableError are retried; the saga completes."""
    store = FaultStore(InMemorySagaStore(), Fault(unavailable={2, 3}))
    script = Script()
    manager = manager_for(script, store=store, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.actions() == ["a", "b", "c"]
    await manager.close()


async def test_store_outage_during_compensation_does_not_fail_it() -> None:
    """An outage while compensating delays but does not change the outcome."""
    store = FaultStore(InMemorySagaStore(), Fault(unavailable={4, 5, 6}))
    script = failing_c(Script())
    manager = manager_for(script, store=store, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert script.undone() == ["b", "a"]
    await manager.close()


@pytest.mark.parametrize("write", [2, 3, 4])
async def test_ambiguous_commit_is_not_a_conflict(write: int) -> None:
    """A write that landed but reported an error causes no false conflict and no rerun."""
    store = FaultStore(InMemorySagaStore(), Fault(ambiguous={write}))
    script = Script()
    manager = manager_for(script, store=store, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.calls == ["a:1", "b:1", "c:1"]
    await manager.close()


@pytest.mark.parametrize("write", [4, 5, 6])
async def test_ambiguous_commit_while_compensating(write: int) -> None:
    """An ambiguous write during compensation runs no compensation twice."""
    store = FaultStore(InMemorySagaStore(), Fault(ambiguous={write}))
    script = failing_c(Script())
    manager = manager_for(script, store=store, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert script.undone() == ["b", "a"]
    await manager.close()


async def test_retried_start_after_ambiguous_commit_runs_the_saga_once() -> None:
    """If start()'s write landed but reported an error, retrying start() runs the saga once."""
    inner = InMemorySagaStore()
    script = Script()
    manager = manager_for(script, store=FaultStore(inner, Fault(ambiguous={1})), config=FAST)
    with pytest.raises(SagaStoreUnavailableError):
        await manager.start("scripted", {"order_id": "o-1"}, "s-1")
    assert await manager.start("scripted", {"order_id": "o-1"}, "s-1") == "s-1"
    record = await manager.wait("s-1", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert len(await inner.list()) == 1
    assert script.calls == ["a:1", "b:1", "c:1"]
    await manager.close()


async def test_failed_attempts_survive_a_crash() -> None:
    """Attempts recorded before a crash still count; the attempt cut short does not."""
    inner = InMemorySagaStore()
    script = Script()
    plan: list[BaseException | None] = [ConnectionError("flaky"), Crash("died"), None]

    async def step_b(ctx: SagaContext) -> object:
        outcome_ = plan.pop(0)
        if outcome_ is not None:
            raise outcome_
        return {"attempt": ctx.attempt}

    script.behaviours["b"] = step_b
    tuning = {"b": Tuning(max_retries=1)}
    first = manager_for(script, store=inner, config=FAST, worker_id="w", tuning=tuning)
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=inner, config=FAST, worker_id="w", tuning=tuning)
    await second.recover()
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.calls == ["a:1", "b:1", "b:2", "b:2", "c:1"]
    assert record.steps["b"].attempts == 2
    assert record.steps["b"].attempt_errors == ["ConnectionError: flaky"]
    await first.close()
    await second.close()


async def test_logs_never_contain_context_payloads(caplog: pytest.LogCaptureFixture) -> None:
    """Retries, outages, rejected values and compensation log ids, never data values."""
    secret = "4111-1111-SECRET"
    script = Script()
    script.behaviours["a"] = raise_each(ConnectionError("flaky"))

    async def leak(ctx: SagaContext) -> object:
        ctx["card_copy"] = {secret}  # not JSON: rejected, logged by key
        return None

    script.behaviours["b"] = leak
    store = FaultStore(InMemorySagaStore(), Fault(unavailable={2}))
    manager = manager_for(script, store=store, config=FAST)
    with caplog.at_level("DEBUG", logger="lexigram"):
        record = await manager.execute("scripted", {"card": secret}, timeout=WAIT)
    await manager.close()
    assert record.status is P.COMPENSATED
    assert caplog.records  # something was logged
    assert secret not in caplog.text
    assert all(secret not in (r.getMessage() + str(r.args)) for r in caplog.records)


# --------------------------------------------------------------------------- text the engine writes


@pytest.mark.parametrize("how", ["fail", "raise", "err"])
async def test_a_lone_surrogate_in_an_error_text_never_strands_the_saga(
    store: SagaStore, how: str
) -> None:
    """Error text a store cannot encode is escaped: the saga ends, in the store too."""

    async def broken(ctx: SagaContext) -> object:
        if how == "fail":
            return SagaStepResult.fail("declined \ud800")
        if how == "err":
            return Err("declined \ud800")
        raise ValueError("declined \ud800")

    waited, durable, _ = await run_with(store, {"b": broken})
    assert durable.status is waited.status is P.COMPENSATED
    assert "declined \\ud800" in (durable.steps["b"].error or "")
    assert durable.failure is not None
    assert "\\ud800" in durable.failure.message


async def test_a_lone_surrogate_in_a_cancel_reason_never_strands_the_saga(
    store: SagaStore,
) -> None:
    """``cancel(reason=...)`` with text UTF-8 cannot encode still ends the saga."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    manager = manager_for(script, store=store, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    record = await asyncio.wait_for(manager.cancel(saga_id, reason="user said \udcff"), WAIT)
    await manager.close()
    durable = await store.load(saga_id)
    assert durable is not None
    assert durable.status is record.status is P.COMPENSATED
    assert "user said \\udcff" in (durable.error or "")


async def test_tuples_are_stored_and_seen_as_lists(store: SagaStore) -> None:
    """A tuple in ``ctx.data`` or an output becomes a list in the worker and the store."""
    seen: list[tuple[str, str]] = []

    async def put(ctx: SagaContext) -> object:
        ctx["point"] = (1, 2)
        return {"ids": ("x", "y")}

    async def look(ctx: SagaContext) -> object:
        seen.append((type(ctx["point"]).__name__, type(ctx.step_results["a"]["ids"]).__name__))
        return None

    waited, durable, _ = await run_with(store, {"a": put, "b": look})
    assert seen == [("list", "list")]
    assert durable.status is P.COMPLETED
    assert durable.data["point"] == waited.data["point"] == [1, 2]
    assert durable.steps["a"].output == {"ids": ["x", "y"]}
