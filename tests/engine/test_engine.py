"""The engine through ``SagaManager``: persistence points, failures, stops, crashes, leases.

SPEC sections 3, 4 and 7. Crashes are simulated by a store wrapper raising ``Crash`` (a
``BaseException``, like a dying process) before or after a chosen write; a new manager on
the same underlying store then calls ``recover()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import Err, Ok, SagaContext, SagaStepResult
from lexigram.events.sagas.errors import NonRetryableError, SagaStoreUnavailableError
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.testing import ManualClock
from lexigram.events.sagas.types import SagaRecord, SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Crash,
    Fault,
    FaultStore,
    Script,
    StuckStep,
    Tuning,
    await_crash,
    blocking,
    check_at_least_once,
    crash_and_recover,
    crash_first,
    finish_run,
    manager_for,
    outcome,
    raise_each,
    reference,
    returning,
    saga_class,
    settle,
    stored,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


def failing_c(script: Script) -> Script:
    """Make step c of ``script`` return a business failure."""
    script.behaviours["c"] = returning(SagaStepResult.fail("declined"))
    return script


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


# --------------------------------------------------------------------------- return values


@pytest.mark.parametrize(
    ("returned", "output"),
    [
        (SagaStepResult.Ok({"id": 1}), {"id": 1}),
        (SagaStepResult(success=True), {}),
        (Ok({"id": 2}), {"id": 2}),
        (Ok("text"), {"value": "text"}),
        (Ok([1, 2]), {"value": [1, 2]}),
        (Ok(None), {}),
        ({"id": 3}, {"id": 3}),
        (None, {}),
    ],
)
async def test_accepted_return_values_are_stored_as_output(
    returned: object, output: object
) -> None:
    """Each accepted return type succeeds; its output lands on the record and step_results."""
    script = Script()
    seen: list[object] = []

    async def read(ctx: SagaContext) -> object:
        seen.append(ctx.step_results["b"])
        return None

    script.behaviours = {"b": returning(returned), "c": read}
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.steps["b"].output == output
    assert seen == [output]
    await manager.close()


@pytest.mark.parametrize("returned", [42, "done", [1, 2], True, 2.5])
async def test_wrong_return_type_fails_without_retry(returned: object) -> None:
    """Another return type fails the step once, naming step and type; the saga compensates."""
    script = Script()
    script.behaviours["b"] = returning(returned)
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    error = record.steps["b"].error or ""
    assert record.status is P.COMPENSATED
    assert script.count("b") == 1
    assert "'b'" in error
    assert type(returned).__name__ in error
    assert script.undone() == ["a"]
    await manager.close()


async def test_unserialisable_output_fails_the_step() -> None:
    """An output JSON cannot hold fails the step, not retried; the saga compensates."""
    script = Script()
    script.behaviours["b"] = returning({"when": object()})
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert record.steps["b"].status is T.FAILED
    assert script.count("b") == 1
    assert "b" in (record.steps["b"].error or "")
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


# --------------------------------------------------------------------------- the saga deadline


async def test_deadline_cancels_the_running_step_and_compensates() -> None:
    """When the saga's deadline passes, the step is cancelled and the saga compensates."""
    script = Script()
    stuck = script.behaviours["b"] = StuckStep()
    manager = manager_for(script, config=SagaConfig(default_timeout_seconds=0.05))
    record = await manager.execute("scripted", timeout=WAIT)
    assert stuck.cancellations == 1
    assert record.status is P.COMPENSATED
    assert "timed out" in (record.error or "")
    assert record.steps["b"].status is T.FAILED
    assert "c" not in record.steps
    assert script.undone() == ["a"]
    await manager.close()


async def test_deadline_is_stored_on_the_record() -> None:
    """``deadline_at`` is ``start()`` + ``default_timeout_seconds``."""
    clock = ManualClock()
    manager = manager_for(Script(), config=SagaConfig(default_timeout_seconds=42), clock=clock)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.created_at is not None
    assert record.deadline_at is not None
    assert (record.deadline_at - record.created_at).total_seconds() == 42
    await manager.close()


async def test_deadline_survives_a_restart() -> None:
    """A saga resumed after its deadline passed compensates instead of running on."""
    clock = ManualClock()
    inner = InMemorySagaStore(clock=clock)
    script = Script()
    script.behaviours["b"] = crash_first()
    config = SagaConfig(retry_delay_seconds=0, default_timeout_seconds=10)
    first = manager_for(script, store=inner, config=config, worker_id="w", clock=clock)
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    clock.advance(60)
    second = manager_for(script, store=inner, config=config, worker_id="w", clock=clock)
    await second.recover()
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert "timed out" in (record.error or "")
    assert "c" not in script.actions()
    await first.close()
    await second.close()


async def test_deadline_does_not_cancel_compensations() -> None:
    """A compensation running when the deadline passes is not cancelled."""
    script = failing_c(Script())
    entered, release = asyncio.Event(), asyncio.Event()
    undo_b = blocking(entered, release)
    script.undo_behaviours["b"] = undo_b
    manager = manager_for(script, config=SagaConfig(default_timeout_seconds=0.05))
    saga_id = await manager.start("scripted")
    await entered.wait()
    await asyncio.sleep(0.1)  # the deadline passes while the compensation runs
    release.set()
    record = await manager.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert record.steps["b"].status is T.COMPENSATED
    assert record.steps["b"].compensation_attempts == 1
    await manager.close()


# --------------------------------------------------------------------------- compensation


async def test_compensations_run_in_reverse_completion_order() -> None:
    """Completed steps are undone last-first; the failed step is not undone."""
    script = Script()
    script.behaviours["d"] = returning(SagaStepResult.fail("no"))
    manager = manager_for(script, ("a", "b", "c", "d"), config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.undone() == ["c", "b", "a"]
    assert record.steps["d"].status is T.FAILED
    assert [record.steps[s].status for s in "abc"] == [T.COMPENSATED] * 3
    await manager.close()


async def test_compensation_retried_after_raised_failure() -> None:
    """A compensation that raises is retried and the saga still ends COMPENSATED."""
    script = failing_c(Script())
    script.undo_behaviours["b"] = raise_each(ValueError("even non-retryable types"))
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(undo_max_retries=2)})
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert record.steps["b"].compensation_attempts == 2
    await manager.close()


async def test_compensation_retried_after_returned_failure() -> None:
    """A compensation returning a failure is retried too."""
    script = failing_c(Script())
    answers = [SagaStepResult.fail("busy"), None]

    async def undo(ctx: SagaContext) -> object:
        return answers.pop(0)

    script.undo_behaviours["b"] = undo
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(undo_max_retries=1)})
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert record.steps["b"].compensation_attempts == 2
    await manager.close()


async def test_compensation_uses_its_own_retry_settings() -> None:
    """The compensation's decorator ``max_retries`` bounds it, not the step's."""
    script = failing_c(Script())
    script.undo_behaviours["b"] = raise_each(*(RuntimeError() for _ in range(20)))
    manager = manager_for(
        script, config=FAST, tuning={"b": Tuning(max_retries=9, undo_max_retries=1)}
    )
    record = await manager.execute("scripted", timeout=WAIT)
    assert script.undone().count("b") == 2
    assert record.steps["b"].compensation_attempts == 2
    await manager.close()


async def test_failed_compensation_leaves_step_failed_and_others_run() -> None:
    """A compensation that gives up leaves its step FAILED; earlier ones still run."""
    script = failing_c(Script())
    script.undo_behaviours["b"] = raise_each(*(RuntimeError("undo broke") for _ in range(20)))
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(undo_max_retries=0)})
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.FAILED
    assert record.steps["b"].status is T.FAILED
    assert "undo broke" in (record.steps["b"].compensation_error or "")
    assert record.steps["a"].status is T.COMPENSATED
    assert script.undone() == ["b", "a"]
    await manager.close()


async def test_failed_saga_error_names_every_failed_compensation() -> None:
    """The saga's error names each step whose compensation failed."""
    script = failing_c(Script())
    for step in ("a", "b"):
        script.undo_behaviours[step] = raise_each(*(RuntimeError() for _ in range(20)))
    tuning = {step: Tuning(undo_max_retries=0) for step in ("a", "b")}
    manager = manager_for(script, config=FAST, tuning=tuning)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.FAILED
    assert "'a'" in (record.error or "")
    assert "'b'" in (record.error or "")
    await manager.close()


async def test_failed_saga_keeps_the_original_cause() -> None:
    """The saga error keeps the step failure that started the compensation."""
    script = failing_c(Script())
    script.undo_behaviours["b"] = raise_each(*(RuntimeError() for _ in range(20)))
    manager = manager_for(script, config=FAST, tuning={"b": Tuning(undo_max_retries=0)})
    record = await manager.execute("scripted", timeout=WAIT)
    assert "declined" in (record.error or "")
    await manager.close()


async def test_compensation_disabled_ends_failed_directly() -> None:
    """With ``enable_compensation=False`` the saga ends FAILED and nothing is undone."""
    script = failing_c(Script())
    config = SagaConfig(retry_delay_seconds=0, enable_compensation=False)
    manager = manager_for(script, config=config)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.FAILED
    assert script.undone() == []
    assert record.steps["a"].status is T.COMPLETED
    assert "declined" in (record.error or "")
    await manager.close()


async def test_failure_of_first_step_ends_compensated_without_compensations() -> None:
    """When nothing completed, the saga ends COMPENSATED with the error."""
    script = Script()
    script.behaviours["a"] = returning(SagaStepResult.fail("nope"))
    manager = manager_for(script, config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert script.undone() == []
    assert "nope" in (record.error or "")
    await manager.close()


async def test_compensation_is_shielded_from_cancel() -> None:
    """``cancel()`` during a compensation does not interrupt it."""
    script = failing_c(Script())
    entered, release = asyncio.Event(), asyncio.Event()
    interrupted: list[bool] = []

    async def undo(ctx: SagaContext) -> object:
        entered.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            interrupted.append(True)
            raise
        return None

    script.undo_behaviours["b"] = undo
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    cancelling = asyncio.create_task(manager.cancel(saga_id, reason="stop"))
    await asyncio.sleep(0.01)
    release.set()
    record = await asyncio.wait_for(cancelling, WAIT)
    assert interrupted == []
    assert record.status is P.COMPENSATED
    assert record.steps["b"].status is T.COMPENSATED
    assert script.undone() == ["b", "a"]
    await manager.close()


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_error_raised_by_a_step_is_not_a_step_failure() -> None:
    """A step raising CancelledError is not swallowed as a failure: no retry, no compensation."""
    script = Script()

    async def cancelled(ctx: SagaContext) -> object:
        raise asyncio.CancelledError

    script.behaviours["b"] = cancelled
    inner = InMemorySagaStore()
    manager = manager_for(script, store=inner, config=FAST)
    saga_id = await manager.start("scripted")
    await settle(manager)
    record = await stored(inner, saga_id)
    assert script.count("b") == 1
    assert script.undone() == []
    assert record.status is P.RUNNING
    assert record.lease_owner is None
    await manager.close()


async def test_step_sees_cancelled_error_when_cancelled() -> None:
    """``cancel()`` delivers CancelledError into the running step."""
    script = Script()
    stuck = script.behaviours["b"] = StuckStep()
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await stuck.entered.wait()
    record = await manager.cancel(saga_id, reason="by test")
    assert stuck.cancellations == 1
    assert record.steps["b"].status is T.FAILED
    assert "by test" in (record.steps["b"].error or "")
    await manager.close()


# --------------------------------------------------------------------------- crashes


async def test_crash_before_the_first_write_stores_nothing() -> None:
    """A crash before ``start()``'s write leaves nothing behind and runs no step."""
    inner = InMemorySagaStore()
    script = Script()
    manager = manager_for(script, store=FaultStore(inner, Fault(crash_before=1)), config=FAST)
    with pytest.raises(Crash):
        await manager.start("scripted", {"order_id": "o-1"}, "s-1")
    assert await inner.list() == []
    assert script.calls == []
    await manager.close()


@pytest.mark.parametrize(
    "fault",
    [Fault(crash_before=w) for w in (2, 3, 4)] + [Fault(crash_after=w) for w in (1, 2, 3, 4)],
    ids=repr,
)
async def test_crash_while_running_forward_recovers_to_the_same_outcome(fault: Fault) -> None:
    """After a crash at any write of a completing saga, recovery reaches the same end."""
    expected = await reference(Script)
    crashed = await crash_and_recover(Script, fault)
    assert outcome(crashed.final) == outcome(expected)
    check_at_least_once(crashed)


@pytest.mark.parametrize(
    "fault",
    [Fault(crash_before=w) for w in (2, 3, 4, 5, 6)]
    + [Fault(crash_after=w) for w in (1, 2, 3, 4, 5, 6)],
    ids=repr,
)
async def test_crash_while_compensating_recovers_to_the_same_outcome(fault: Fault) -> None:
    """After a crash at any write of a compensating saga, recovery reaches the same end."""

    def make() -> Script:
        return failing_c(Script())

    expected = await reference(make)
    crashed = await crash_and_recover(make, fault)
    assert outcome(crashed.final) == outcome(expected)
    check_at_least_once(crashed)


async def test_crash_inside_a_step_reruns_only_that_step() -> None:
    """A worker dying inside step b: a, already durable, never runs again; b runs twice."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first()
    first = manager_for(script, store=inner, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=inner, config=FAST, worker_id="w")
    assert await second.recover() == 1
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.actions() == ["a", "b", "b", "c"]
    assert record.data["survived"] is True
    await first.close()
    await second.close()


async def test_crash_inside_a_compensation_reruns_only_that_compensation() -> None:
    """A worker dying inside a compensation: on recovery it runs again, then the rest."""
    inner = InMemorySagaStore()
    script = failing_c(Script())
    script.undo_behaviours["b"] = crash_first()
    first = manager_for(script, store=inner, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=inner, config=FAST, worker_id="w")
    assert await second.recover() == 1
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPENSATED
    assert script.undone() == ["b", "b", "a"]
    assert script.actions() == ["a", "b", "c"]
    await first.close()
    await second.close()


async def test_attempt_cut_short_by_a_crash_does_not_count() -> None:
    """A crash during an attempt does not use up ``max_retries``."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first()
    tuning = {"b": Tuning(max_retries=0)}
    first = manager_for(script, store=inner, config=FAST, worker_id="w", tuning=tuning)
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=inner, config=FAST, worker_id="w", tuning=tuning)
    await second.recover()
    record = await second.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert record.steps["b"].attempts == 1
    assert script.calls.count("b:1") == 2
    await first.close()
    await second.close()


@pytest.mark.parametrize("fault", [Fault(crash_before=1), Fault(crash_after=1)], ids=repr)
async def test_crash_during_recover_is_recovered_again(fault: Fault) -> None:
    """A worker dying at its claim during ``recover()`` leaves the saga recoverable."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first()
    first = manager_for(script, store=inner, config=FAST, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    second = manager_for(script, store=FaultStore(inner, fault), config=FAST, worker_id="w")
    with pytest.raises(Crash):
        await second.recover()
    third = manager_for(script, store=inner, config=FAST, worker_id="w")
    assert await third.recover() == 1
    record = await third.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.count("a") == 1
    for manager in (first, second, third):
        await manager.close()


# --------------------------------------------------------------------------- poison sagas


async def recover_until_terminal(
    inner: InMemorySagaStore, script: Script, config: SagaConfig, saga_id: str
) -> tuple[SagaRecord, int, list[SagaManager]]:
    """Take the saga over with fresh managers until it ends; return it and the takeovers."""
    managers: list[SagaManager] = []
    record = await stored(inner, saga_id)
    while not record.is_terminal and len(managers) < 10:
        manager = manager_for(script, store=inner, config=config, worker_id="w")
        managers.append(manager)
        assert await manager.recover() == 1
        await finish_run(saga_id)
        record = await stored(inner, saga_id)
    return record, len(managers), managers


async def test_poison_step_is_failed_after_max_recovery_attempts() -> None:
    """A step that kills its worker every time is failed after N takeovers; saga compensates."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours["b"] = crash_first(times=100)
    config = SagaConfig(retry_delay_seconds=0, max_recovery_attempts=2)
    first = manager_for(script, store=inner, config=config, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    record, takeovers, managers = await recover_until_terminal(inner, script, config, saga_id)
    assert record.status is P.COMPENSATED
    assert takeovers == 3
    assert script.count("b") == 3  # the first run and two takeovers that crashed
    assert record.steps["b"].status is T.FAILED
    assert "kept crashing" in (record.steps["b"].error or "")
    assert "kept crashing" in (record.error or "")
    assert script.undone() == ["a"]
    for manager in [first, *managers]:
        await manager.close()


async def test_poison_compensation_is_failed_and_the_rest_still_run() -> None:
    """A compensation that kills its worker every time is failed; the others run; saga FAILED."""
    inner = InMemorySagaStore()
    script = failing_c(Script())
    script.undo_behaviours["b"] = crash_first(times=100)
    config = SagaConfig(retry_delay_seconds=0, max_recovery_attempts=1)
    first = manager_for(script, store=inner, config=config, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    record, takeovers, managers = await recover_until_terminal(inner, script, config, saga_id)
    assert record.status is P.FAILED
    assert takeovers == 2
    assert script.undone().count("b") == 2
    assert record.steps["b"].status is T.FAILED
    assert "kept crashing" in (record.steps["b"].compensation_error or "")
    assert record.steps["a"].status is T.COMPENSATED
    assert "'b'" in (record.error or "")
    for manager in [first, *managers]:
        await manager.close()


async def test_progress_resets_the_recovery_count() -> None:
    """Takeovers that make progress are not counted against ``max_recovery_attempts``."""
    inner = InMemorySagaStore()
    script = Script()
    script.behaviours = {"b": crash_first(), "c": crash_first()}
    config = SagaConfig(retry_delay_seconds=0, max_recovery_attempts=1)
    first = manager_for(script, store=inner, config=config, worker_id="w")
    saga_id = await first.start("scripted")
    await await_crash(saga_id)
    record, takeovers, managers = await recover_until_terminal(inner, script, config, saga_id)
    assert record.status is P.COMPLETED
    assert takeovers == 2
    for manager in [first, *managers]:
        await manager.close()


# --------------------------------------------------------------------------- leases


async def test_zombie_worker_does_not_write_after_takeover() -> None:
    """A worker whose lease was taken over finishes its step but writes nothing."""
    clock = ManualClock()
    inner = InMemorySagaStore(clock=clock)
    zombie_view = FaultStore(inner)
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    first_call = [True]

    async def step_a(ctx: SagaContext) -> object:
        if first_call[0]:
            first_call[0] = False
            entered.set()
            await release.wait()
            ctx["by"] = "zombie"
            return {"by": "zombie"}
        ctx["by"] = "successor"
        return {"by": "successor"}

    script.behaviours["a"] = step_a
    zombie = manager_for(script, store=zombie_view, config=FAST, worker_id="A", clock=clock)
    saga_id = await zombie.start("scripted")
    await entered.wait()
    clock.advance(FAST.lease_seconds + 1)  # A's lease expires; its deadline has not
    successor = manager_for(script, store=inner, config=FAST, worker_id="B", clock=clock)
    assert await successor.recover() == 1
    done = await successor.wait(saga_id, timeout=WAIT)
    saves_before = len(zombie_view.saves)
    release.set()
    await settle(zombie)
    after = await stored(inner, saga_id)
    assert done.status is P.COMPLETED
    assert len(zombie_view.saves) == saves_before
    assert after.version == done.version
    assert after.status is P.COMPLETED
    assert after.data["by"] == "successor"
    assert script.actions() == ["a", "a", "b", "c"]
    await zombie.close()
    await successor.close()


async def test_heartbeat_notices_lost_lease_and_stops_the_step() -> None:
    """A worker whose lease was taken over stops its running step without writing."""
    clock = ManualClock()
    inner = InMemorySagaStore(clock=clock)
    zombie_view = FaultStore(inner)
    script = Script()
    entered, stopped = asyncio.Event(), asyncio.Event()
    first_call = [True]

    async def step_a(ctx: SagaContext) -> object:
        if first_call[0]:
            first_call[0] = False
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                stopped.set()
                raise
        return None

    script.behaviours["a"] = step_a
    fast_beat = SagaConfig(retry_delay_seconds=0, lease_seconds=0.03)
    zombie = manager_for(script, store=zombie_view, config=fast_beat, worker_id="A", clock=clock)
    saga_id = await zombie.start("scripted")
    await entered.wait()
    saves_before = len(zombie_view.saves)
    clock.advance(FAST.lease_seconds + 1)
    successor = manager_for(script, store=inner, config=FAST, worker_id="B", clock=clock)
    assert await successor.recover() == 1
    await asyncio.wait_for(stopped.wait(), WAIT)
    record = await successor.wait(saga_id, timeout=WAIT)
    await settle(zombie)
    assert record.status is P.COMPLETED
    assert len(zombie_view.saves) == saves_before
    await zombie.close()
    await successor.close()


async def test_heartbeat_keeps_a_long_step_leased() -> None:
    """A step running longer than the lease is not taken over while heartbeats succeed."""
    inner = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    config = SagaConfig(retry_delay_seconds=0, lease_seconds=0.05)
    owner = manager_for(script, store=inner, config=config, worker_id="A")
    saga_id = await owner.start("scripted")
    await entered.wait()
    await asyncio.sleep(0.25)  # five lease lengths
    other = manager_for(script, store=inner, config=FAST, worker_id="B")
    assert await other.recover() == 0
    release.set()
    record = await owner.wait(saga_id, timeout=WAIT)
    assert record.status is P.COMPLETED
    assert script.count("b") == 1
    await owner.close()
    await other.close()


async def test_live_lease_blocks_other_workers() -> None:
    """While a worker runs a saga, another worker's ``recover()`` claims nothing."""
    inner = InMemorySagaStore()
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["b"] = blocking(entered, release)
    owner = manager_for(script, store=inner, config=FAST, worker_id="A")
    saga_id = await owner.start("scripted")
    await entered.wait()
    other = manager_for(script, store=inner, config=FAST, worker_id="B")
    assert await other.recover() == 0
    assert other.running() == ()
    release.set()
    await owner.wait(saga_id, timeout=WAIT)
    assert script.count("b") == 1
    await owner.close()
    await other.close()


async def test_terminal_saga_releases_its_lease() -> None:
    """A finished saga holds no lease."""
    manager = manager_for(Script(), config=FAST)
    record = await manager.execute("scripted", timeout=WAIT)
    assert record.lease_owner is None
    assert record.lease_expires_at is None
    await manager.close()


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
    first = manager_for(script, store=inner, config=FAST)
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
