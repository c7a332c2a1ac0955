"""Lifecycle events: built only with a bus, published after their write, never fatal."""

from __future__ import annotations

import logging

import pytest

from lexigram.events import InMemoryEventBus
from lexigram.events.sagas._engine.announce import Announcer
from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas._engine.run import SagaRun
from lexigram.events.sagas.events import SagaStarted
from lexigram.events.sagas.types import SagaRecord
from tests.support.helpers import RaisingBus


def a_run() -> SagaRun:
    flow = Flow("f", {}, "a", None, lambda: None, None)
    return SagaRun(SagaRecord("s-1", "f"), flow, "w-1")


def test_without_a_bus_nothing_is_queued() -> None:
    """No bus: no event is even built."""
    run = a_run()
    Announcer(None, "w-1").queue(run, SagaStarted)
    assert run.outbox == []


def test_queued_events_wait_on_the_run() -> None:
    """With a bus, a queued event waits in the run's outbox for the next write."""
    run = a_run()
    bus = InMemoryEventBus(record=True)
    Announcer(bus, "w-1").queue(run, SagaStarted)
    assert [type(event) for event in run.outbox] == [SagaStarted]
    assert bus.published == []


async def test_a_failing_bus_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A bus that raises never breaks the saga: the failure is logged with the saga's id."""
    caplog.set_level(logging.WARNING, logger="lexigram.events.sagas")
    await Announcer(RaisingBus(), "w-1").publish(a_run(), SagaStarted)
    [record] = [r for r in caplog.records if "publishing SagaStarted failed" in r.getMessage()]
    assert record.__dict__["saga_id"] == "s-1"
    assert record.__dict__["worker_id"] == "w-1"
