"""What OpenTelemetry instrumentation costs: one process, three variants interleaved.

``python -m bench.systems.otel_bench --inflight 50 --batches 5`` prints one JSON line. It
runs the workload of ``run/sqlite/<inflight>`` (``bench/systems/lexigram_bench.py``: the
3-step saga, ``SQLiteSagaStore`` on a fresh file) in three variants:

- ``off`` (A): a manager that is not instrumented (the engine's ``hooks`` are ``None``);
- ``sdk`` (B): ``instrument(manager, ...)`` with the SDK's ``TracerProvider``, its spans
  going through a ``BatchSpanProcessor`` to an exporter that drops them
  (:class:`DroppingSpanExporter`), and the SDK's ``MeterProvider`` with an
  ``InMemoryMetricReader`` that is never collected: the SDK's real work (spans,
  attributes, aggregation, the processor's thread), no I/O;
- ``noop`` (C): ``instrument(manager, ...)`` with the API's ``NoOpTracerProvider`` and
  ``NoOpMeterProvider``: what the hooks cost by themselves.

Timings on a shared machine drift by tens of percent within a minute, so the variants run
in turn in one process: a cycle times one batch of each (A, B, C, then B, C, A, ...), and
the process runs ``--batches`` cycles. Each batch opens a fresh file, a new manager (and,
for B, new providers), runs a few untimed sagas, then times ``n`` sagas; for B the time
includes flushing the spans still queued at its end, so that B pays for every span it made.
``n`` is chosen once, by a warm-up of doubling batches on A, so a batch lasts about
``--seconds``. Reported: each variant's median over the batches, and the medians of B ÷ A
and C ÷ A, and of the time B and C add to a saga, taken within each cycle (neighbours in
time, so the drift cancels).

``--instructions`` instead counts instructions with callgrind (``valgrind`` on ``PATH``),
in memory, where they do not depend on the disk: per saga, as the difference between 100
and 600 sagas (which cancels start-up and imports), for A (``bench/hot_path.py`` as it is),
B and C (:func:`hot_path`, the same loop after ``instrument``), B's two halves
(``sdk_traces``: the SDK's tracer with the no-op meter; ``sdk_metrics``: the other way
round), and the cost of one ``engine.hooks is not None`` test: what an engine that is not
instrumented pays, a few times per saga.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.systems._common import Options, drive, emit
from bench.systems.lexigram_bench import LexigramBench, OrderSaga
from lexigram.events.sagas import SagaManager
from lexigram.events.sagas.otel import instrument

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("off", "sdk", "noop")
"""The timed variants: A, B and C."""
COUNTED = (*VARIANTS, "sdk_traces", "sdk_metrics")
"""The variants whose instructions are counted: B's spans and B's metrics, too."""
SMALL, LARGE = 100, 600
"""The two sizes whose difference in instructions, over ``LARGE - SMALL``, is per saga."""
CHECKS = 200_000
"""Iterations of the loop that prices one ``engine.hooks is not None`` test."""


class DroppingSpanExporter(SpanExporter):
    """An exporter that accepts every batch and sends it nowhere."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Drop ``spans``; report success."""
        return SpanExportResult.SUCCESS


class SdkProviders:
    """Variant B's providers: the SDK doing its real work, exporting nothing."""

    def __init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(DroppingSpanExporter()))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def flush(self) -> None:
        """Hand every queued span to the exporter (it blocks until done)."""
        self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        """Stop the span processor's thread and the meter provider."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def install(manager: SagaManager, variant: str) -> SdkProviders | None:
    """Instrument ``manager`` as ``variant`` says; return the SDK's providers (to flush, stop)."""
    if variant == "off":
        return None
    sdk = SdkProviders() if variant.startswith("sdk") else None
    tracer_provider: trace.TracerProvider = trace.NoOpTracerProvider()
    meter_provider: metrics.MeterProvider = metrics.NoOpMeterProvider()
    if sdk is not None and variant != "sdk_metrics":
        tracer_provider = sdk.tracer_provider
    if sdk is not None and variant != "sdk_traces":
        meter_provider = sdk.meter_provider
    instrument(manager, tracer_provider=tracer_provider, meter_provider=meter_provider)
    return sdk


# ---------------------------------------------------------------------- timed, on SQLite


async def one_batch(options: Options, variant: str, n: int) -> tuple[float, int]:
    """Time ``n`` sagas of ``variant`` on a fresh file; return (sagas/s, wrong outcomes)."""
    bench = LexigramBench(options)
    await bench.setup(options)
    sdk: SdkProviders | None = None
    try:
        assert bench.manager is not None
        sdk = install(bench.manager, variant)
        _, wrong = await drive(bench.run_one, max(8, 4 * options.inflight), options.inflight)
        gc.collect()
        started = time.perf_counter()
        _, timed_wrong = await drive(bench.run_one, n, options.inflight)
        if sdk is not None:
            sdk.flush()
        elapsed = time.perf_counter() - started
    finally:
        await bench.teardown()
        if sdk is not None:
            sdk.shutdown()
    return n / elapsed, wrong + timed_wrong


async def choose_n(options: Options) -> int:
    """Sagas per batch so that one lasts about ``options.seconds`` (warm-up on A)."""
    bench = LexigramBench(options)
    await bench.setup(options)
    try:
        warm = max(8, 4 * options.inflight)
        while True:
            elapsed, _ = await drive(bench.run_one, warm, options.inflight)
            if elapsed >= options.seconds / 10 or warm >= options.max_n:
                break
            warm *= 2
    finally:
        await bench.teardown()
    n = int(options.seconds / max(elapsed / warm, 1e-9))
    return max(10 * options.inflight, 20, min(n, options.max_n))


async def interleaved(options: Options, batches: int) -> dict[str, Any]:
    """Run ``batches`` cycles of the three variants; return the JSON fields."""
    n = await choose_n(options)
    rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    wrong = 0
    for cycle in range(batches):
        shift = cycle % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            rate, bad = await one_batch(options, variant, n)
            rates[variant].append(rate)
            wrong += bad
    fields: dict[str, Any] = {"n": n, "batches": batches, "by_batch": rates, "wrong": wrong}
    for variant in VARIANTS:
        fields[f"{variant}_sagas_per_s"] = statistics.median(rates[variant])
    for variant in ("sdk", "noop"):
        pairs = list(zip(rates["off"], rates[variant], strict=True))
        fields[f"{variant}_ratio"] = statistics.median(b / a for a, b in pairs)
        fields[f"{variant}_added_us"] = statistics.median(1e6 / b - 1e6 / a for a, b in pairs)
    fields["sagas_per_s"] = fields["off_sagas_per_s"]
    return fields


# ---------------------------------------------------------------------- instructions


async def hot_path(variant: str, count: int) -> None:
    """``bench/hot_path.py``'s loop (in memory, sequential), instrumented as ``variant``."""
    manager = SagaManager()
    manager.register(OrderSaga)
    sdk = install(manager, variant)
    for i in range(count):
        await manager.execute(OrderSaga.name, {"i": i})
    await manager.close()
    if sdk is not None:
        sdk.flush()
        sdk.shutdown()


def checks(kind: str, count: int) -> None:
    """``count`` tests of ``engine.hooks is not None`` on a real engine (``bare``: the loop)."""
    engine = SagaManager()._engine
    if kind == "test":
        for _ in range(count):
            if engine.hooks is not None:
                raise AssertionError("instrumented")
    else:
        for _ in range(count):
            pass


def _instructions(module_args: list[str]) -> int:
    """Instructions (``I refs``) of ``python -m <module_args>`` under callgrind."""
    env = {**os.environ, "PYTHONPATH": "src:.", "PYTHONHASHSEED": "0"}
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        *module_args,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {done.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def instructions() -> dict[str, Any]:
    """Instructions per saga of each counted variant in memory, and of one ``hooks`` test."""
    if shutil.which("valgrind") is None:
        return {"unavailable": "valgrind is not installed (apt-get install valgrind)"}
    me = "bench.systems.otel_bench"
    refs: dict[str, dict[str, int]] = {}
    for variant in COUNTED:
        refs[variant] = {
            str(size): _instructions(
                ["bench.hot_path", "run", str(size)]
                if variant == "off"
                else [me, "--hot-path", variant, str(size)]
            )
            for size in (SMALL, LARGE)
        }
    bare = _instructions([me, "--checks", "bare", str(CHECKS)])
    tested = _instructions([me, "--checks", "test", str(CHECKS)])
    fields: dict[str, Any] = {"refs": refs, "check_refs": {"bare": bare, "test": tested}}
    for variant in COUNTED:
        runs = refs[variant]
        fields[f"{variant}_instructions_per_saga"] = (runs[str(LARGE)] - runs[str(SMALL)]) / (
            LARGE - SMALL
        )
    fields["check_instructions"] = (tested - bare) / CHECKS
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    fields["info"] = {"valgrind": version.stdout.strip(), "sizes": [SMALL, LARGE]}
    return fields


# ---------------------------------------------------------------------- entry point


def _info(options: Options) -> dict[str, Any]:
    return {
        "version": importlib.metadata.version("lexigram-events"),
        "opentelemetry_sdk": importlib.metadata.version("opentelemetry-sdk"),
        "sqlite": {"journal_mode": options.journal_mode, "synchronous": options.synchronous},
        "sdk_variant": "TracerProvider + BatchSpanProcessor(dropping exporter), "
        "MeterProvider(InMemoryMetricReader never collected)",
        "noop_variant": "trace.NoOpTracerProvider(), metrics.NoOpMeterProvider()",
    }


def main() -> None:
    """Parse the command line; print one JSON line (or run a callgrind target)."""
    parser = argparse.ArgumentParser(prog="python -m bench.systems.otel_bench")
    parser.add_argument("--inflight", type=int, default=1, help="sagas in flight (1: sequential)")
    parser.add_argument("--batches", type=int, default=5, help="cycles of the three variants")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one batch")
    parser.add_argument("--max-n", type=int, default=2_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/work"))
    parser.add_argument("--journal-mode", default="WAL")
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--instructions", action="store_true", help="callgrind, in memory")
    parser.add_argument("--hot-path", nargs=2, metavar=("VARIANT", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--checks", nargs=2, metavar=("KIND", "COUNT"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.hot_path:
        asyncio.run(hot_path(ns.hot_path[0], int(ns.hot_path[1])))
        return
    if ns.checks:
        checks(ns.checks[0], int(ns.checks[1]))
        return
    base = {"system": "lexigram", "inflight": ns.inflight}
    if ns.instructions:
        emit({**base, "workload": "otel-instructions", "store": "memory", **instructions()})
        return
    ns.workdir.mkdir(parents=True, exist_ok=True)
    options = Options(
        system="lexigram",
        workload="run",
        store="sqlite",
        inflight=ns.inflight,
        n=0,
        seconds=ns.seconds,
        max_n=ns.max_n,
        workdir=ns.workdir.resolve(),
        journal_mode=ns.journal_mode.upper(),
        synchronous=ns.synchronous.upper(),
        pg_dsn="",
    )
    load_before = os.getloadavg()[0]
    fields = asyncio.run(interleaved(options, ns.batches))
    # Other processes' CPU use skews fsync-bound timings most: the report shows the load.
    fields["load_average_start"] = load_before
    fields["load_average_end"] = os.getloadavg()[0]
    emit({**base, "workload": "otel", "store": "sqlite", "info": _info(options), **fields})


if __name__ == "__main__":
    main()
