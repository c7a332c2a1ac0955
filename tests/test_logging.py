"""Every library log record carries the structured fields (SPEC section 12)."""

from __future__ import annotations

import logging

import pytest

from lexigram.events.sagas._logging import LOG_FIELDS, log_fields
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaStepResult
from lexigram.events.sagas.store import InMemorySagaStore
from tests.support.helpers import WAIT, Script, Tuning, manager_for, raise_each, returning


def test_log_fields_names_every_field() -> None:
    """``log_fields`` fills each documented field, ``None`` where unknown."""
    assert log_fields(saga_id="s") == dict.fromkeys(LOG_FIELDS) | {"saga_id": "s"}


async def test_engine_log_records_carry_the_saga_fields(caplog: pytest.LogCaptureFixture) -> None:
    """Warnings from a run (refused values, a compensation giving up) carry every field."""
    caplog.set_level(logging.DEBUG, logger="lexigram.events.sagas")
    script = Script()

    async def bad(ctx: object) -> object:
        script.calls.append("bad")
        ctx["trace"] = {1, 2}  # type: ignore[index]
        return None

    script.behaviours["b"] = bad
    script.undo_behaviours["a"] = raise_each(RuntimeError("refund refused"))
    manager = manager_for(
        script,
        store=InMemorySagaStore(),
        config=SagaConfig(retry_delay_seconds=0),
        worker_id="w-1",
        tuning={"a": Tuning(undo_max_retries=0)},
    )
    await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
    await manager.close()
    records = [r for r in caplog.records if r.name.startswith("lexigram.events.sagas")]
    assert len(records) >= 2
    for record in records:
        for name in LOG_FIELDS:
            assert hasattr(record, name), (record.getMessage(), name)
        assert record.__dict__["saga_id"] == "s-1"
        assert record.__dict__["worker_id"] == "w-1"
    assert any(r.__dict__["step"] == "a" and r.__dict__["attempt"] == 1 for r in records)


async def test_a_returned_failure_logs_nothing_it_should_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A business failure is not an incident: no warning is logged for it."""
    caplog.set_level(logging.WARNING, logger="lexigram.events.sagas")
    script = Script()
    script.behaviours["b"] = returning(SagaStepResult.fail("declined"))
    manager = manager_for(script, config=SagaConfig(retry_delay_seconds=0))
    await manager.execute("scripted", timeout=WAIT)
    await manager.close()
    assert [r for r in caplog.records if r.name.startswith("lexigram")] == []
