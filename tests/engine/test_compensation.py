"""Compensation: reverse completion order, retries, failures (SPEC 4, 5)."""

from __future__ import annotations

import asyncio

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Script,
    Tuning,
    failing_c,
    manager_for,
    raise_each,
    returning,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


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
