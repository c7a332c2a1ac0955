"""OpenTelemetry: spans, propagation from enqueue to worker, metrics (SPEC section 12).

The SDK's in-memory exporter and metric reader stand in for a collector.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from lexigram.events.sagas import (
    InMemorySagaStore,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaManager,
    SagaStatus,
    SagaStepResult,
    saga_step,
)
from lexigram.events.sagas.otel import instrument, uninstrument

FAST = SagaConfig(retry_delay_seconds=0, shutdown_timeout=1)


class Telemetry:
    """A tracer provider and a meter provider that keep what they get, in memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def attach(self, manager: SagaManager) -> None:
        instrument(
            manager, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        found: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry()
    yield made
    made.tracer_provider.shutdown()
    made.meter_provider.shutdown()


class Order(SagaBase):
    name = "order"
    app_tracer: trace.Tracer = trace.get_tracer("app")  # the test's provider when set

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        with self.app_tracer.start_as_current_span("inventory.call"):
            pass

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        return None

    @saga_step("charge", max_retries=1)
    async def charge(self, ctx: SagaContext) -> SagaStepResult:
        if ctx["amount"] > 100:
            return SagaStepResult.fail("card declined")
        if ctx.attempt == 1 and ctx.get("flaky"):
            raise ConnectionError("gateway timeout")
        return SagaStepResult.Ok()


def by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


async def test_a_run_is_a_span_with_a_child_per_attempt(telemetry: Telemetry) -> None:
    """``saga order`` > ``step reserve`` > the step's own span; attributes on each."""
    manager = SagaManager(config=FAST, worker_id="w-1")
    manager.register(Order)
    telemetry.attach(manager)
    Order.app_tracer = telemetry.tracer_provider.get_tracer("app")
    final = await manager.execute("order", {"amount": 10, "flaky": True}, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    spans = by_name(telemetry.finished())
    (run,) = spans["saga order"]
    (reserve,) = spans["step reserve"]
    (own,) = spans["inventory.call"]
    charges = spans["step charge"]
    assert [span.attributes["saga.attempt"] for span in charges] == [1, 2]  # type: ignore[index]
    assert [span.attributes["saga.outcome"] for span in charges] == ["failed", "ok"]  # type: ignore[index]
    assert charges[0].status.status_code is StatusCode.ERROR
    assert reserve.parent is not None
    assert reserve.parent.span_id == run.context.span_id
    assert own.parent is not None
    assert own.parent.span_id == reserve.context.span_id
    assert run.attributes == {
        "saga.id": final.saga_id,
        "saga.name": "order",
        "saga.worker": "w-1",
        "saga.outcome": "completed",
    }
    assert reserve.attributes is not None
    assert (reserve.attributes["saga.step"], reserve.attributes["saga.attempt"]) == ("reserve", 1)
    await manager.close()


async def test_a_compensated_saga_has_compensation_spans_and_an_error(
    telemetry: Telemetry,
) -> None:
    """Compensations are ``compensate <step>`` spans; the run span's status is ``ERROR``."""
    manager = SagaManager(config=FAST)
    manager.register(Order)
    telemetry.attach(manager)
    final = await manager.execute("order", {"amount": 500}, timeout=5)
    assert final.status is SagaStatus.COMPENSATED
    spans = by_name(telemetry.finished())
    (run,) = spans["saga order"]
    (undo,) = spans["compensate reserve"]
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes is not None
    assert run.attributes["saga.outcome"] == "compensated"
    assert undo.attributes is not None
    assert undo.attributes["saga.compensation"] is True
    assert undo.parent is not None
    assert undo.parent.span_id == run.context.span_id
    await manager.close()


async def test_the_trace_continues_from_the_enqueuer_to_the_worker(
    telemetry: Telemetry,
) -> None:
    """Enqueued inside a span in one manager, run by another: one trace, parent to child."""
    store = InMemorySagaStore()
    client = SagaManager(store, config=FAST, worker_id="api")
    worker = SagaManager(store, config=FAST, worker_id="worker")
    for manager in (client, worker):
        manager.register(Order)
        telemetry.attach(manager)
    tracer = telemetry.tracer_provider.get_tracer("api")
    with tracer.start_as_current_span("POST /orders") as request:
        saga_id = await client.enqueue("order", {"amount": 10})
    stored = await store.load(saga_id)
    assert stored is not None
    assert "traceparent" in stored.metadata["trace"]
    await worker.recover()
    final = await worker.wait(saga_id, timeout=5)
    assert final.status is SagaStatus.COMPLETED
    (run,) = by_name(telemetry.finished())["saga order"]
    assert run.context.trace_id == request.get_span_context().trace_id
    assert run.parent is not None
    assert run.parent.span_id == request.get_span_context().span_id
    assert run.attributes is not None
    assert run.attributes["saga.worker"] == "worker"
    await client.close()
    await worker.close()


async def test_metrics_of_a_completed_and_a_compensated_saga(telemetry: Telemetry) -> None:
    """Counters by outcome, durations, pickup latency, nothing left in flight."""
    manager = SagaManager(config=FAST)
    manager.register(Order)
    telemetry.attach(manager)
    await manager.execute("order", {"amount": 10}, timeout=5)
    await manager.execute("order", {"amount": 500}, timeout=5)
    points = telemetry.points()

    def total(name: str) -> int:
        return sum(point.value for point in points.get(name, []))

    assert total("sagas.started") == 2
    assert total("sagas.completed") == 1
    assert total("sagas.compensated") == 1
    assert "sagas.failed" not in points or total("sagas.failed") == 0
    assert total("sagas.in_flight") == 0
    durations = {
        point.attributes["saga.outcome"]: point.count for point in points["sagas.duration"]
    }
    assert durations == {"completed": 1, "compensated": 1}
    assert sum(point.count for point in points["sagas.pickup_latency"]) == 2
    steps = {
        (point.attributes["saga.step"], point.attributes["saga.outcome"]): point.count
        for point in points["sagas.step.duration"]
    }
    assert steps[("reserve", "ok")] == 3  # two actions and one compensation
    assert steps[("charge", "failed")] == 1
    for point in points["sagas.started"]:
        assert point.attributes == {"saga.name": "order"}
    await manager.close()


async def test_parked_sagas_are_counted_until_resumed(telemetry: Telemetry) -> None:
    """``sagas.parked`` goes up when a saga parks and down when it is resumed."""
    import asyncio

    class Approval(SagaBase):
        name = "approval"

        @saga_step("approve", wait_for="ok")
        async def approve(self, ctx: SagaContext) -> None:
            return None

    manager = SagaManager(config=FAST)
    manager.register(Approval)
    telemetry.attach(manager)
    saga_id = await manager.start("approval", {})
    async with asyncio.timeout(5):
        while (await manager.get(saga_id)).waiting is None:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert sum(point.value for point in telemetry.points()["sagas.parked"]) == 1
    await manager.signal(saga_id, "ok")
    stop = asyncio.Event()
    serving = asyncio.create_task(manager.serve(stop=stop, poll_interval=0.02))
    await manager.wait(saga_id, timeout=5)
    stop.set()
    await serving
    assert sum(point.value for point in telemetry.points()["sagas.parked"]) == 0
    await manager.close()


async def test_uninstrument_stops_recording(telemetry: Telemetry) -> None:
    """After ``uninstrument`` no span is made."""
    manager = SagaManager(config=FAST)
    manager.register(Order)
    telemetry.attach(manager)
    uninstrument(manager)
    await manager.execute("order", {"amount": 10}, timeout=5)
    assert telemetry.finished() == []
    await manager.close()


def test_the_library_imports_no_opentelemetry_without_instrument() -> None:
    """Importing and running sagas never imports an ``opentelemetry`` module."""
    code = (
        "import asyncio, sys\n"
        "from lexigram.events.sagas import SagaManager, SagaBase, saga_step\n"
        "from lexigram.events.sagas.sqlite import SQLiteSagaStore\n"
        "class S(SagaBase):\n"
        "    name = 's'\n"
        "    @saga_step('a')\n"
        "    async def a(self, ctx):\n"
        "        return None\n"
        "async def main():\n"
        "    m = SagaManager()\n"
        "    m.register(S)\n"
        "    await m.execute('s', {})\n"
        "    await m.close()\n"
        "asyncio.run(main())\n"
        "loaded = sorted(n for n in sys.modules if n.startswith('opentelemetry'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
