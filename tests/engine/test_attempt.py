"""One attempt of a step: what its return value or exception comes to (SPEC 3, 4)."""

from __future__ import annotations

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import Ok, SagaContext, SagaStepResult
from lexigram.events.sagas.types import SagaStatus, SagaStepStatus
from tests.support.helpers import (
    WAIT,
    Script,
    manager_for,
    returning,
)

FAST = SagaConfig(retry_delay_seconds=0)
P = SagaStatus
T = SagaStepStatus


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
