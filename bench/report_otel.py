"""The OpenTelemetry cases on ``docs/benchmarks.md``: tables, targets and the section's text.

``bench/report.py`` aggregates every case the same way (medians over the rounds, the fields
in :data:`FIELDS` included) and calls these functions for the cases of
``bench/systems/otel_bench.py``: ``otel/sqlite/<in flight>`` (three variants timed in turn
in one process) and ``otel-instructions/memory/1`` (callgrind, first round only).
"""

from __future__ import annotations

from typing import Any

Results = dict[tuple[str, str], dict[str, Any]]

FIELDS = (
    "off_sagas_per_s",
    "sdk_sagas_per_s",
    "noop_sagas_per_s",
    "sdk_ratio",
    "noop_ratio",
    "sdk_added_us",
    "noop_added_us",
    "load_average_start",
    "load_average_end",
    "off_instructions_per_saga",
    "sdk_instructions_per_saga",
    "noop_instructions_per_saga",
    "sdk_traces_instructions_per_saga",
    "sdk_metrics_instructions_per_saga",
    "check_instructions",
)
"""Fields of an otel result that get a median over the rounds."""

MAX_DROP = 0.10
"""The issue's target: with the SDK and a no-op exporter, at most 10 % fewer sagas/s."""
HOOK_TESTS = 9
"""``hooks`` tests an engine that is not instrumented makes for a 3-step saga: one in
``start``, one as its run begins, one as it ends, one per step (reading ``self.hooks``)
and one per attempt (a local ``is None``). All are priced at the measured cost of the
dearer kind (an attribute read and a test), so the figure is an upper bound."""
NOT_MEASURABLE = 0.01
"""A cost below this share of a saga is "nothing measurable": batch-to-batch timings on
one machine differ by more than that."""
VARIANTS = {
    "off": "not instrumented (A)",
    "sdk": "SDK, no-op exporter (B)",
    "noop": "API no-op providers (C)",
}
COUNTED = {
    **VARIANTS,
    "sdk_traces": "B's spans only (SDK tracer, no-op meter)",
    "sdk_metrics": "B's metrics only (no-op tracer, SDK meter)",
}


def _timed(table: Results) -> list[tuple[int, dict[str, Any]]]:
    """(in flight, entry) of every timed otel case, by in flight."""
    found = [
        (int(entry["inflight"]), entry)
        for (case, _system), entry in table.items()
        if case.startswith("otel/") and "sdk_ratio" in entry
    ]
    return sorted(found, key=lambda item: item[0])


def _instructions(table: Results) -> dict[str, Any]:
    return next((e for (case, _s), e in table.items() if case.startswith("otel-instructions/")), {})


def _flight(inflight: int) -> str:
    return "sequential" if inflight == 1 else f"{inflight} in flight"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} µs"


def _percent(ratio: float) -> str:
    """``0.93`` -> ``-7.0 %``."""
    return f"{(ratio - 1) * 100:+.1f} %"


def timed_table(table: Results) -> list[str]:
    lines = [
        "| in flight | " + " | ".join(VARIANTS.values()) + " | B ÷ A | C ÷ A "
        "| time B adds per saga | time C adds per saga | sagas per batch | batches per variant |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for inflight, entry in _timed(table):
        rates = " | ".join(f"{entry[f'{v}_sagas_per_s']:,.0f}" for v in VARIANTS)
        batches = entry["last"].get("batches", 0)
        lines.append(
            f"| {inflight} | {rates} "
            f"| {entry['sdk_ratio']:.3f} ({_percent(entry['sdk_ratio'])}) "
            f"| {entry['noop_ratio']:.3f} ({_percent(entry['noop_ratio'])}) "
            f"| {_us(entry.get('sdk_added_us'))} | {_us(entry.get('noop_added_us'))} "
            f"| {entry['n']:,.0f} | {entry['rounds']} rounds of {batches} |"
        )
    return lines


def instructions_table(table: Results) -> list[str]:
    entry = _instructions(table)
    if "off_instructions_per_saga" not in entry:
        return []
    off = entry["off_instructions_per_saga"]
    noop = entry["noop_instructions_per_saga"]
    lines = [
        "| variant | instructions per saga | ÷ A | added to A | of which the SDK's (added to C) |",
        "|---|--:|--:|--:|--:|",
    ]
    for variant, name in COUNTED.items():
        value = entry.get(f"{variant}_instructions_per_saga")
        if value is None:
            continue
        added = "-" if variant == "off" else f"{value - off:+,.0f}"
        sdk = f"{value - noop:+,.0f}" if variant.startswith("sdk") else "-"
        lines.append(f"| {name} | {value:,.0f} | {value / off:.2f}x | {added} | {sdk} |")
    return lines


def _disabled(table: Results) -> tuple[str | None, bool | None]:
    """The cost of the hooks' tests when not instrumented, and whether it is unmeasurable."""
    entry = _instructions(table)
    if "check_instructions" not in entry:
        return None, None
    check = entry["check_instructions"]
    saga = entry["off_instructions_per_saga"]
    share = HOOK_TESTS * check / saga
    text = (
        f"{HOOK_TESTS} `hooks` tests per saga, at most {HOOK_TESTS * check:,.0f} instructions: "
        f"{share * 100:.2f} % of a saga's {saga:,.0f} in memory (callgrind), less of a "
        "durable saga"
    )
    return text, share < NOT_MEASURABLE


def targets(table: Results) -> list[tuple[str, str | None, bool | None]]:
    """(target, measured, met) for the OpenTelemetry targets; ``measured`` ``None``: not run."""
    timed = _timed(table)
    measured = None
    met = None
    if timed:
        measured = ", ".join(
            f"{_flight(k)}: B ÷ A {e['sdk_ratio']:.2f} ({_percent(e['sdk_ratio'])}"
            + (f", {_us(e['sdk_added_us'])} more a saga)" if "sdk_added_us" in e else ")")
            for k, e in timed
        )
        met = all(e["sdk_ratio"] >= 1 - MAX_DROP for _k, e in timed)
    disabled, quiet = _disabled(table)
    return [
        (
            "OpenTelemetry on (SDK, no-op exporter): SQLite durable throughput drops by at "
            f"most {MAX_DROP * 100:g} %",
            measured,
            met,
        ),
        ("OpenTelemetry off: no measurable drop", disabled, quiet),
    ]


def section(table: Results, options: dict[str, Any], nproc: int) -> list[str]:
    """The page's *OpenTelemetry* section (empty when no otel case ran)."""
    timed = _timed(table)
    if not timed and not _instructions(table):
        return []
    cycles = options.get("otel_batches", 0)
    seconds = options.get("seconds", 0)
    lines = [
        "## What OpenTelemetry instrumentation costs",
        "",
        "The SQLite workload of the throughput table (the 3-step saga, `SQLiteSagaStore` on "
        f'a fresh file, `synchronous="{options.get("synchronous")}"`, '
        f'`journal_mode="{options.get("journal_mode")}"`) in three variants, timed in turn '
        f"in one process (`bench/systems/otel_bench.py`): {cycles} cycles of one batch of "
        f"each (A, B, C, then B, C, A, ...), each batch on a fresh file and a new manager, "
        f"about {seconds:g} s long after a few untimed sagas.",
        "",
        "- **A**: a `SagaManager` that is not instrumented.",
        "- **B**: `instrument(manager, tracer_provider=..., meter_provider=...)` with the "
        "SDK's `TracerProvider` (a `BatchSpanProcessor` over an exporter whose `export` "
        "returns `SUCCESS` and does nothing) and the SDK's `MeterProvider` (an "
        "`InMemoryMetricReader`, never collected): spans and metrics made, aggregated and "
        "queued as in an application, no I/O. Its time includes flushing the spans still "
        "queued at the end of its batch.",
        "- **C**: `instrument(...)` with `trace.NoOpTracerProvider()` and "
        "`metrics.NoOpMeterProvider()`: the cost of the hooks alone.",
        "",
        "Sagas per second: per process, the median over its batches; B ÷ A, C ÷ A and the "
        "time B and C add to a saga: per process, the median over the cycles of the figure "
        "within each cycle (neighbours in time, so the machine's drift cancels); then the "
        "median over the rounds.",
        "",
        *timed_table(table),
        "",
    ]
    loads = [
        load
        for _k, entry in timed
        for field in ("load_average_start_all", "load_average_end_all")
        for load in entry.get(field, [])
    ]
    if loads:
        lines += [
            f"Load average (1 min) around these processes: {min(loads):.2f} to "
            f"{max(loads):.2f} on {nproc} cores. Other processes' work skews these timings, "
            "the sequential ones most (each saga waits for four commits, and for the CPU "
            "after each): compare them on an idle machine only.",
            "",
        ]
    instructions = instructions_table(table)
    if instructions:
        check = _instructions(table)["check_instructions"]
        lines += [
            "Instructions per saga, counted by callgrind in memory (no disk), as the "
            "difference between 100 and 600 sequential sagas over 500 (which cancels "
            "start-up and imports): A is `bench/hot_path.py run` as it is; B and C run the "
            "same loop after `instrument(...)`, and so do B's halves, B with its meter (or "
            "its tracer) provider swapped for the no-op one. *Added to C*: the SDK's own "
            "work, beyond what the hooks cost with no-op providers.",
            "",
            *instructions,
            "",
            "**Not instrumented** (the target's *disabled*): `lexigram.events.sagas` never "
            "imports OpenTelemetry, and the engine's `hooks` are `None`. What that costs is "
            "the engine's tests of them: one in `start`, one as a run begins, one as it ends, "
            "one per step and one per attempt. One `engine.hooks is not None` is "
            f"{check:,.0f} instructions (callgrind, a loop with and without the test): "
            f"{_disabled(table)[0]}, whose writes add to its instructions and wait for the "
            f"disk. Batch-to-batch timings here differ by more than {NOT_MEASURABLE * 100:g} %: a "
            "cost below that is the target's *nothing measurable*.",
            "",
        ]
    return lines
