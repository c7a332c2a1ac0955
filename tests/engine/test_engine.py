"""The engine through ``SagaManager``: persistence points, failures, stops, crashes, leases.

SPEC sections 3, 4 and 7. Crashes are simulated by a store wrapper raising ``Crash`` (a
``BaseException``, like a dying process) before or after a chosen write; a new manager on
the same underlying store then calls ``recover()``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import Err, SagaContext, SagaStepResult
from lexigram.events.sagas.errors import NonRetryableError
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    FaultStore,
    Script,
    Tuning,
    blocking,
    failing_c,
    manager_for,
    raise_each,
    returning,
    saga_class,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


# --------------------------------------------------------------------------- persistence points


async def test_completed_three_step_saga_writes_four_times() -> None:
    """Start, each step completion, the last one with the terminal status: 4 writes."""
    store = FaultStore(InMemorySagaStore())
    manager = manager_for(Script(), store=store, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert [status for *_, status in store.saves] == [P.PENDING, P.RUNNING, P.RUNNING, P.COMPLETED]
    await manager.close()


async def test_compensated_saga_persists_failure_and_each_compensation() -> None:
    """The failure that starts compensation and every compensation outcome are written."""
    store = FaultStore(InMemorySagaStore())
    manager = manager_for(failing_c(Script()), store=store, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert [status for *_, status in store.saves] == [
        P.PENDING,
        P.RUNNING,
        P.RUNNING,
        P.COMPENSATING,
        P.COMPENSATING,
        P.COMPENSATED,
    ]
    await manager.close()


async def test_failed_attempt_that_will_retry_is_persisted() -> None:
    """A transient failure is written before the retry, with its attempt and error."""
    inner = InMemorySagaStore()
    script = Script()
    seen: list[tuple[int, list[str]]] = []

    async def flaky(ctx: SagaContext) -> object:
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        record = await stored(inner, ctx.saga_id)
        seen.append((record.steps["b"].attempts, record.steps["b"].attempt_errors))
        return None

    script.behaviours["b"] = flaky
    manager = manager_for(script, store=inner, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert seen == [(1, ["ConnectionError: flaky"])]
    await manager.close()


async def test_each_step_starts_after_the_previous_completion_is_durable() -> None:
    """When a step starts, every earlier step is COMPLETED in the store."""
    inner = InMemorySagaStore()
    script = Script()
    durable: list[dict[str, T]] = []

    def looking(step: str) -> Callable[[SagaContext], Any]:
        async def look(ctx: SagaContext) -> object:
            durable.append((await stored(inner, ctx.saga_id)).step_statuses())
            return {"step": step}

        return look

    script.behaviours = {name: looking(name) for name in ("a", "b", "c")}
    manager = manager_for(script, store=inner, config=FAST)
    await manager.execute("scripted", timeout=WAIT)
    assert durable == [{}, {"a": T.COMPLETED}, {"a": T.COMPLETED, "b": T.COMPLETED}]
    await manager.close()


async def test_persist_state_false_writes_only_start_and_end() -> None:
    """With ``persist_state=False`` only the start and the terminal state are stored."""
    store = FaultStore(InMemorySagaStore())
    manager = manager_for(
        Script(), store=store, config=SagaConfig(retry_delay_seconds=0, persist_state=False)
    )
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert [status for *_, status in store.saves] == [P.PENDING, P.COMPLETED]
    await manager.close()


async def test_version_rises_by_one_per_save() -> None:
    """Every save raises the version by exactly one."""
    store = FaultStore(InMemorySagaStore())
    manager = manager_for(failing_c(Script()), store=store, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert all(after == before + 1 for _, before, after, _ in store.saves)
    assert [after for _, _, after, _ in store.saves] == list(range(1, len(store.saves) + 1))
    assert record.version == len(store.saves)
    await manager.close()


# --------------------------------------------------------------------------- failures and retries


async def test_returned_failure_is_not_retried() -> None:
    """``SagaStepResult.fail`` is a business decision: one attempt, then compensation."""
    script = failing_c(Script())
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.count("c") == 1
    assert record.steps["c"].error == "declined"
    assert record.status is P.COMPENSATED
    await manager.close()


async def test_err_is_not_retried() -> None:
    """``Err(error)`` fails the step once."""
    script = Script()
    script.behaviours["b"] = returning(Err("out of stock"))
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.count("b") == 1
    assert record.steps["b"].error == "out of stock"
    await manager.close()


async def test_retryable_returned_failure_is_retried() -> None:
    """``fail(..., retryable=True)`` is retried like a transient error."""
    script = Script()
    answers = [SagaStepResult.fail("busy", retryable=True), SagaStepResult.Ok({"ok": 1})]

    async def answer(ctx: SagaContext) -> object:
        return answers.pop(0)

    script.behaviours["b"] = answer
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.steps["b"].attempts == 2
    await manager.close()


class InvalidOrderError(NonRetryableError):
    """A business rule violation."""


@pytest.mark.parametrize(
    "error",
    [
        NonRetryableError("no"),
        InvalidOrderError("bad order"),
        ValueError("bad"),
        TypeError("bad"),
        KeyError("k"),
        IndexError("i"),
        AttributeError("a"),
        NotImplementedError("n"),
    ],
)
async def test_non_retryable_exceptions_fail_at_once(error: Exception) -> None:
    """Default non-retryable types (and NonRetryableError subclasses) are not retried."""
    script = Script()
    script.behaviours["b"] = raise_each(error)
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.count("b") == 1
    assert record.steps["b"].attempts == 1
    assert record.steps["b"].status is T.FAILED
    assert type(error).__name__ in (record.steps["b"].error or "")
    assert record.status is P.COMPENSATED
    await manager.close()


@pytest.mark.parametrize(
    "error", [RuntimeError("r"), ConnectionError("c"), OSError("o"), TimeoutError("t")]
)
async def test_other_exceptions_are_retried(error: Exception) -> None:
    """Other raised exceptions are transient and retried."""
    script = Script()
    script.behaviours["b"] = raise_each(error)
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.count("b") == 2
    await manager.close()


async def test_non_retryable_exceptions_are_configurable() -> None:
    """``non_retryable_exceptions`` in the config decides what is not retried."""
    script = Script()
    script.behaviours["b"] = raise_each(ConnectionError("down"))
    config = SagaConfig(retry_delay_seconds=0, non_retryable_exceptions=(ConnectionError,))
    manager = manager_for(script, config=config)
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.count("b") == 1
    assert record.status is P.COMPENSATED
    await manager.close()


async def test_configured_tuple_replaces_the_defaults() -> None:
    """With a custom tuple, a default type such as ValueError is retried."""
    script = Script()
    script.behaviours["b"] = raise_each(ValueError("flaky"))
    config = SagaConfig(retry_delay_seconds=0, non_retryable_exceptions=(ConnectionError,))
    manager = manager_for(script, config=config)
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.count("b") == 2
    assert record.status is P.COMPLETED
    await manager.close()


async def test_transient_failure_is_attempted_max_retries_plus_one_times() -> None:
    """A step failing every time runs ``max_retries + 1`` times; each error is kept."""
    script = Script()
    script.behaviours["b"] = raise_each(*(RuntimeError(f"boom {n}") for n in range(1, 10)))
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(max_retries=2)})
    record = await manager.execute("scripted", timeout=WAIT)
    step = record.steps["b"]
    assert script.count("b") == 3
    assert step.attempts == 3
    assert step.attempt_errors == [
        "RuntimeError: boom 1",
        "RuntimeError: boom 2",
        "RuntimeError: boom 3",
    ]
    assert step.error == "RuntimeError: boom 3"
    assert record.status is P.COMPENSATED
    await manager.close()


async def test_config_max_retries_applies_when_step_sets_none() -> None:
    """``max_retries_per_step`` bounds a step that does not set ``max_retries``."""
    script = Script()
    script.behaviours["b"] = raise_each(*(RuntimeError() for _ in range(10)))
    config = SagaConfig(retry_delay_seconds=0, max_retries_per_step=1)
    manager = manager_for(script, config=config, tuning={"b": Tuning(max_retries=None)})
    await manager.execute("scripted", timeout=WAIT)
    assert script.count("b") == 2
    await manager.close()


async def test_zero_retries_means_one_attempt() -> None:
    """``max_retries=0`` attempts a transient failure once."""
    script = Script()
    script.behaviours["b"] = raise_each(RuntimeError())
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(max_retries=0)})
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.count("b") == 1
    assert record.status is P.COMPENSATED
    await manager.close()


async def test_retries_wait_with_exponential_backoff() -> None:
    """Retries wait ``retry_delay``, then ``retry_delay * multiplier`` (no jitter here)."""
    script = Script()
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky(ctx: SagaContext) -> object:
        times.append(loop.time())
        if ctx.attempt < 3:
            raise ConnectionError
        return None

    script.behaviours["b"] = flaky
    config = SagaConfig(jitter=0, backoff_multiplier=2.0)
    manager = manager_for(script, config=config, tuning={"b": Tuning(retry_delay=0.02)})
    await manager.execute("scripted", timeout=WAIT)
    assert times[1] - times[0] >= 0.02 * 0.99
    assert times[2] - times[1] >= 0.04 * 0.99
    await manager.close()


async def test_attempt_timeout_is_a_transient_failure() -> None:
    """An attempt exceeding ``timeout`` is cancelled, recorded as timed out, and retried."""
    script = Script()
    cancelled: list[int] = []

    async def slow_first(ctx: SagaContext) -> object:
        if ctx.attempt == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise
        return {"attempt": ctx.attempt}

    script.behaviours["b"] = slow_first
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(timeout=0.05)})
    record = await manager.execute("scripted", timeout=WAIT)
    step = record.steps["b"]
    assert record.status is P.COMPLETED
    assert cancelled == [1]
    assert step.attempts == 2
    assert "timed out" in step.attempt_errors[0]
    assert step.output == {"attempt": 2}
    await manager.close()


async def test_attempt_timeouts_exhaust_retries() -> None:
    """A step that always times out fails after ``max_retries + 1`` attempts."""
    script = Script()
    script.behaviours["b"] = blocking(asyncio.Event())
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(timeout=0.02, max_retries=1)})
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert record.steps["b"].attempts == 2
    assert all("timed out" in error for error in record.steps["b"].attempt_errors)
    await manager.close()


CRASHING_RUN = """
import asyncio, gc
from lexigram.events.sagas import InMemorySagaStore, SagaBase, SagaContext, SagaManager, saga_step
from lexigram.events.sagas.testing import FaultyStore

class Two(SagaBase):
    name = "two"

    @saga_step("a")
    async def a(self, ctx: SagaContext) -> None:
        return None

    @saga_step("b")
    async def b(self, ctx: SagaContext) -> None:
        return None

async def main() -> None:
    store = InMemorySagaStore()
    crashing = SagaManager(FaultyStore(store, crash_after_write=2), worker_id="w")
    crashing.register(Two)
    saga_id = await crashing.start("two")
    await asyncio.sleep(0.05)
    second = SagaManager(store, worker_id="w")
    second.register(Two)
    await second.recover()
    print((await second.wait(saga_id, timeout=5)).status)
    await second.close()

asyncio.run(main())
gc.collect()
"""


def test_a_crashed_run_leaves_no_unretrieved_task_exception(tmp_path: Path) -> None:
    """A run task ended by ``SimulatedCrash`` is collected: no "never retrieved" warning."""
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_RUN)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDEVMODE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "completed"
    assert "never retrieved" not in result.stderr


# --------------------------------------------------------------------------- the saga instance


class BoomError(Exception):
    pass


def broken_factory() -> Any:
    raise BoomError("no services")


async def test_factory_failure_fails_the_saga_and_wakes_the_waiter() -> None:
    """A factory that raises fails the saga (not a hang): ``execute()`` gets its record."""
    inner = InMemorySagaStore()
    script = Script()
    broken = SagaManager(inner, config=FAST)
    broken.register(saga_class(script), factory=broken_factory)
    record = await asyncio.wait_for(broken.execute("scripted"), WAIT)
    assert record.status is P.COMPENSATED
    assert record.failure is not None
    assert record.failure.kind == "step_error"
    assert "factory raised BoomError: no services" in (record.error or "")
    assert script.calls == []
    assert (await stored(inner, record.saga_id)).status is P.COMPENSATED
    await broken.close()


async def test_factory_failure_on_resume_cannot_compensate_so_the_saga_fails() -> None:
    """Resumed with steps done but no instance, compensations cannot run: ``FAILED``."""
    inner = InMemorySagaStore()
    script = Script()
    first = manager_for(script, store=inner, config=SagaConfig(shutdown_timeout=0))
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    saga_id = await first.start("scripted")
    await entered.wait()
    await first.close()  # stops it without compensating: "a" is done, "b" in flight
    broken = SagaManager(inner, config=FAST)
    broken.register(saga_class(script), factory=broken_factory)
    assert await broken.recover() == 1
    record = await broken.wait(saga_id, timeout=WAIT)
    assert record.status is P.FAILED
    assert record.failure is not None
    assert record.failure.kind == "compensation_failed"
    assert record.steps["a"].status is T.FAILED
    assert "could not be built" in (record.steps["a"].compensation_error or "")
    await broken.close()
