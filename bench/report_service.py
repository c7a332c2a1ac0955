"""The service cases on ``docs/benchmarks.md``: tables, targets and the section's text.

``bench/report.py`` aggregates every case the same way (medians over the rounds, the fields
in :data:`FIELDS` included) and calls these functions for the cases whose workload is
``service`` (``bench/systems/service_bench.py``).
"""

from __future__ import annotations

from typing import Any

Results = dict[tuple[str, str], dict[str, Any]]

FIELDS = (
    "enqueue_per_s",
    "pickup_p50_ms",
    "pickup_p99_ms",
    "pickup_max_ms",
    "pickup_from_call_p50_ms",
    "enqueue_call_p50_ms",
    "loaded_pickup_p50_ms",
    "idle_cpu_pct",
)
"""Fields of a service result that get a median over the rounds (besides ``sagas_per_s``)."""

STORES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}
WORKERS = (1, 2, 4)
THROUGHPUT_TIMES = 10
PICKUP_MS = 5.0
IDLE_PCT = 1.0
KEEPING_UP = 0.85
"""Throughput at this share of the enqueue rate or more: the workers kept up with it."""


def _entry(table: Results, store: str, workers: int, system: str) -> dict[str, Any]:
    return table.get((f"service/{store}/{workers}", system), {})


def _value(table: Results, store: str, workers: int, system: str, field: str) -> float | None:
    value = _entry(table, store, workers, system).get(field)
    return None if value is None else float(value)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} ms"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def _pair(table: Results, store: str, workers: int, system: str) -> str:
    p50 = _value(table, store, workers, system, "pickup_p50_ms")
    p99 = _value(table, store, workers, system, "pickup_p99_ms")
    if p50 is None or p99 is None:
        return _cell(_entry(table, store, workers, system))
    return f"{_ms(p50).removesuffix(' ms')} / {_ms(p99)}"


def _cell(entry: dict[str, Any]) -> str:
    return "n/a" if "note" in entry else "-"


def _rate(entry: dict[str, Any]) -> str:
    if "sagas_per_s" not in entry:
        return _cell(entry)
    text = f"{entry['sagas_per_s']:,.0f}"
    if entry.get("wrong"):
        text += " (wrong outcomes!)"
    if entry.get("failed"):
        text += " *"
    return text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _cases(table: Results) -> list[tuple[str, int]]:
    found = {
        (e["store"], int(e["inflight"])) for e in table.values() if e.get("workload") == "service"
    }
    found |= {
        (case.split("/")[1], int(case.split("/")[2]))
        for case, _system in table
        if case.startswith("service/")
    }
    return sorted(found, key=lambda c: (list(STORES).index(c[0]), c[1]))


def service_table(table: Results) -> list[str]:
    lines = [
        "| store | worker processes | lexigram sagas/s | DBOS sagas/s | lexigram ÷ DBOS "
        "| pickup p50 / p99, lexigram | pickup p50 / p99, DBOS "
        "| idle worker CPU, lexigram | idle worker CPU, DBOS |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for store, workers in _cases(table):
        ours = _value(table, store, workers, "lexigram", "sagas_per_s")
        theirs = _value(table, store, workers, "dbos", "sagas_per_s")
        ratio = "-" if not ours or not theirs else f"{ours / theirs:.1f}x"
        lines.append(
            f"| {STORES[store]} | {workers} "
            f"| {_rate(_entry(table, store, workers, 'lexigram'))} "
            f"| {_rate(_entry(table, store, workers, 'dbos'))} | {ratio} "
            f"| {_pair(table, store, workers, 'lexigram')} "
            f"| {_pair(table, store, workers, 'dbos')} "
            f"| {_pct(_value(table, store, workers, 'lexigram', 'idle_cpu_pct'))} "
            f"| {_pct(_value(table, store, workers, 'dbos', 'idle_cpu_pct'))} |"
        )
    return lines


def details_table(table: Results) -> list[str]:
    lines = [
        "| store | worker processes | system | sagas (throughput) | enqueue calls/s "
        "| pace set by | pickup p50 under load | sagas run per worker (last round) "
        "| enqueue call p50 (steady) |",
        "|---|--:|---|--:|--:|---|--:|---|--:|",
    ]
    names = {"lexigram": "lexigram", "dbos": "DBOS"}
    for store, workers in _cases(table):
        for system, name in names.items():
            entry = _entry(table, store, workers, system)
            if "sagas_per_s" not in entry:
                continue
            per_worker = " + ".join(f"{n:,}" for n in entry["last"].get("per_worker", []))
            enqueued = entry.get("enqueue_per_s", 0)
            pace = "the enqueuer" if _paced_by_enqueuer(entry) else "the workers"
            lines.append(
                f"| {STORES[store]} | {workers} | {name} | {entry.get('n', 0):,.0f} "
                f"| {enqueued:,.0f} | {pace} "
                f"| {_ms(entry.get('loaded_pickup_p50_ms'))} | {per_worker} "
                f"| {_ms(entry.get('enqueue_call_p50_ms'))} |"
            )
    return lines


def _paced_by_enqueuer(entry: dict[str, Any]) -> bool:
    enqueued = float(entry.get("enqueue_per_s", 0))
    return bool(enqueued) and float(entry["sagas_per_s"]) >= KEEPING_UP * enqueued


def _throughput_target(table: Results) -> tuple[str, str | None, bool | None]:
    parts, oks = [], []
    paced = 0
    for store in STORES:
        ratios = []
        for workers in WORKERS:
            ours = _value(table, store, workers, "lexigram", "sagas_per_s")
            theirs = _value(table, store, workers, "dbos", "sagas_per_s")
            if ours and theirs:
                ratios.append(f"{workers}: {ours / theirs:.1f}x")
                oks.append(ours / theirs >= THROUGHPUT_TIMES)
                paced += _paced_by_enqueuer(_entry(table, store, workers, "lexigram"))
        if ratios:
            parts.append(f"{STORES[store]} (workers {', '.join(ratios)})")
    measured = "; ".join(parts)
    if paced and not all(oks):
        measured += (
            f"; lexigram's pace was set by the enqueuer in {paced} of {len(oks)} cases "
            "(see Service)"
        )
    return (
        "service, enqueue → complete with 1, 2 and 4 worker processes: at least "
        f"{THROUGHPUT_TIMES}x the throughput of DBOS queues",
        measured or None,
        all(oks) if oks else None,
    )


def _pickup_target(table: Results) -> tuple[str, str | None, bool | None]:
    values = [
        (workers, _value(table, "postgres", workers, "lexigram", "pickup_p50_ms"))
        for workers in WORKERS
    ]
    found = [(w, v) for w, v in values if v is not None]
    ok = all(v < PICKUP_MS for _w, v in found) if found else None
    measured = ", ".join(f"{w} worker{'s' if w > 1 else ''} {_ms(v)}" for w, v in found)
    commit = _value(table, "postgres", 1, "lexigram", "enqueue_call_p50_ms")
    if ok is False and commit is not None:
        # A pickup is at least one commit (the claim): put the server's pace beside it.
        measured += f"; one enqueue call (one commit) took {_ms(commit)} (p50) in this run"
    return (
        f"service, PostgreSQL (notifications): pickup p50 under {PICKUP_MS:g} ms",
        measured or None,
        ok,
    )


def targets(table: Results) -> list[tuple[str, str | None, bool | None]]:
    """(target, measured, met) for the service targets; ``measured`` ``None``: not run."""
    idle = [(store, _value(table, store, 1, "lexigram", "idle_cpu_pct")) for store in STORES]
    idle_measured = [(s, v) for s, v in idle if v is not None]
    return [
        _throughput_target(table),
        _pickup_target(table),
        (
            f"service: an idle worker costs under {IDLE_PCT:g} % of a core",
            ", ".join(f"{STORES[s]} {_pct(v)}" for s, v in idle_measured) or None,
            all(v < IDLE_PCT for _s, v in idle_measured) if idle_measured else None,
        ),
    ]


def section(table: Results, options: dict[str, Any], nproc: int) -> list[str]:
    """The page's *Service* section (empty when no service case ran)."""
    if not _cases(table):
        return []
    lexigram_n = options.get("service_n", 0)
    dbos_n = options.get("service_dbos_n", 0)
    latency_n = options.get("service_latency_n", 0)
    idle = options.get("service_idle_seconds", 0)
    dbos_poll = next(
        (
            e["info"].get("polling_interval_sec")
            for (_c, system), e in table.items()
            if system == "dbos" and e.get("workload") == "service" and e.get("info")
        ),
        None,
    )
    poll_text = f"{dbos_poll:g} s" if dbos_poll else "see `bench/systems/service_dbos.py`"
    return [
        "## Service: enqueue in one process, run in worker processes",
        "",
        "The 3-step saga enqueued by one process and run by 1, 2 or 4 worker processes on "
        "one store, every process separate (`bench/systems/service_bench.py`). "
        "**lexigram**: workers call `await manager.serve(concurrency=64)` (default poll "
        "interval; PostgreSQL wakes them by `LISTEN/NOTIFY`, SQLite by watching the file's "
        "commit counter), the enqueuer calls `manager.enqueue(...)`. **DBOS**: workers "
        "launch DBOS (an executor id each) and dequeue from "
        '`DBOS.register_queue("bench_service", worker_concurrency=64, '
        f"polling_interval_sec={dbos_poll if dbos_poll else 0.1:g})`, the enqueuer calls "
        "`DBOSClient(...).enqueue_async(...)`. Same server (PostgreSQL) or one file per "
        "system (SQLite, WAL, `synchronous=FULL`). The worker counts run in turn in one set "
        "of processes: workers are added (1, then 2, then 4) to the same store, which keeps "
        "the sagas of the earlier phases.",
        "",
        f"- **Throughput**: the enqueuer enqueues {lexigram_n:,} sagas (DBOS: {dbos_n:,}) "
        "from 16 coroutines as fast as it can while the workers run them; sagas per second "
        "from the first enqueue call to the end of the last saga's step 3.",
        f"- **Pickup latency**: {latency_n:,} sagas (after 5 left out), one every 20 ms on a "
        "fixed schedule, so each arrives at idle workers: from the return of the enqueue "
        "call (the saga is committed) to the start of step 1's body (`time.time()` in both "
        "processes, one machine). p50 and p99 over the sagas of a round; the figures are "
        "medians over the rounds.",
        f"- **Idle worker**: one worker serving, nothing enqueued, for {idle:g} s: the CPU "
        "time of the worker process, all threads (`time.process_time()` in the worker, "
        "asked for at both ends), as a share of one core. "
        "The database server's own work is not counted.",
        "",
        *service_table(table),
        "",
        "Details: the enqueue rate alone (the enqueuer's calls per second during the "
        "throughput phase); what set the pace (*the enqueuer*: the workers ran the sagas "
        f"at {KEEPING_UP:.0%} of the enqueue rate or more, so the figure above is the "
        "enqueuer's as much as the workers'); the pickup latency of that phase (mostly time "
        "in the queue); how the sagas spread over the workers; one enqueue call's time in "
        "the latency phase.",
        "",
        *details_table(table),
        "",
        f"Caveats: this machine has {nproc} cores; with 4 workers, the enqueuer and the "
        "database server, the processes share them (oversubscribed), so more workers "
        "cannot mean more throughput here. DBOS polls its queue: its default interval is "
        f"1 s; the benchmark uses {poll_text} so that polling does not cap its throughput "
        "(at most `worker_concurrency` workflows per poll), which also makes its idle "
        "workers busier and its pickup shorter than with the default.",
        "",
    ]
