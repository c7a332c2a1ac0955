"""The durable-waits cases on ``docs/benchmarks.md``: tables, targets and the section's text.

``bench/report.py`` aggregates every case the same way (medians over the rounds, the fields
in :data:`FIELDS` included) and calls these functions for the cases whose workload is
``waits`` (``bench/systems/waits_bench.py``). A waits case runs in one round by default, so
its "median" is usually that round's figure.
"""

from __future__ import annotations

from typing import Any

Results = dict[tuple[str, str], dict[str, Any]]

FIELDS = (
    "parked",
    "parked_per_s",
    "rss_before_bytes",
    "rss_tenth_bytes",
    "rss_parked_bytes",
    "rss_bytes_per_saga",
    "rss_tenth_to_all_bytes_per_saga",
    "blocks_per_saga",
    "blocks_tenth_to_all_per_saga",
    "timer_rss_bytes_per_saga",
    "timer_blocks_per_saga",
    "store_bytes_per_saga",
    "store_live_bytes_per_saga",
    "store_index_bytes_per_saga",
    "store_live_index_bytes_per_saga",
    "signal_n",
    "signal_calls_per_s",
    "resume_p50_ms",
    "resume_p99_ms",
    "resume_max_ms",
    "signal_call_p50_ms",
    "loaded_resume_p50_ms",
)
"""Fields of a waits result that get a median over the rounds (besides ``sagas_per_s``)."""

STORES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}
SYSTEMS = {"lexigram": "lexigram", "dbos": "DBOS"}
NOISE_BYTES = 16.0
"""Worker memory per parked saga below this is 0 within the measurement's noise: anything
a worker kept per saga (an id in a set, an entry in a dict) takes more than 50 bytes, and
would add a Python block per saga too."""
JUDGED_FROM = 100_000
"""The memory target is judged with this many parked sagas or more (a full run)."""
STORE_BYTES = 2048.0
WAKE_MS = 10.0
THROUGHPUT_TIMES = 5.0
KEEPING_UP = 0.85
"""Sagas completed at this share of the signal calls' rate or more: the worker kept up
with the client, whose pace the figure is as much as the worker's."""


def _entry(table: Results, store: str, system: str) -> dict[str, Any]:
    return next(
        (
            e
            for (case, name), e in table.items()
            if name == system and case.startswith(f"waits/{store}/")
        ),
        {},
    )


def _value(table: Results, store: str, system: str, field: str) -> float | None:
    value = _entry(table, store, system).get(field)
    return None if value is None else float(value)


def _stores(table: Results) -> list[str]:
    found = {case.split("/")[1] for case, _system in table if case.startswith("waits/")}
    return [store for store in STORES if store in found]


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value / 1024:,.1f} KB"
    return f"{round(value):,} B"  # an int: never "-0 B"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} ms"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def _missing(entry: dict[str, Any]) -> str:
    return "n/a" if "note" in entry else "-"


def memory_table(table: Results) -> list[str]:
    lines = [
        "| store | system | parked (waiting) at once | parked per second "
        "| worker RSS, MB: before → a tenth parked → all "
        "| worker RSS per parked saga, a tenth → all (before → all) "
        "| Python blocks per parked saga | worker RSS per saga on a timer "
        "| store per parked saga, as written (live) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for store in _stores(table):
        for system, name in SYSTEMS.items():
            entry = _entry(table, store, system)
            if "parked" not in entry:
                lines.append(f"| {STORES[store]} | {name} | {_missing(entry)} ||||||||")
                continue

            def get(field: str, entry: dict[str, Any] = entry) -> float | None:
                value = entry.get(field)
                return None if value is None else float(value)

            rss = " → ".join(
                _mb(get(f)) for f in ("rss_before_bytes", "rss_tenth_bytes", "rss_parked_bytes")
            )
            per_saga = (
                f"{_bytes(get('rss_tenth_to_all_bytes_per_saga'))} "
                f"({_bytes(get('rss_bytes_per_saga'))})"
            )
            if entry.get("wrong"):
                per_saga += " (wrong outcomes!)"
            blocks = get("blocks_tenth_to_all_per_saga")
            size = _bytes(get("store_bytes_per_saga"))
            live = get("store_live_bytes_per_saga")
            if store == "postgres" and live is not None:
                size += f" ({_bytes(live)})"
            lines.append(
                f"| {STORES[store]} | {name} | {entry['parked']:,.0f} "
                f"| {entry['parked_per_s']:,.0f} | {rss} | {per_saga} "
                f"| {'-' if blocks is None else f'{blocks:,.2f}'} "
                f"| {_bytes(get('timer_rss_bytes_per_saga'))} | {size} |"
            )
    return lines


def _paced_by_client(entry: dict[str, Any]) -> bool:
    calls = float(entry.get("signal_calls_per_s", 0))
    return bool(calls) and float(entry["sagas_per_s"]) >= KEEPING_UP * calls


def signal_table(table: Results) -> list[str]:
    lines = [
        "| store | system | signalled | first signal → last completed | sagas/s "
        "| lexigram ÷ DBOS | signal calls/s | pace set by "
        "| signal → resume p50 / p99, idle worker | under load, p50 |",
        "|---|---|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for store in _stores(table):
        ours = _value(table, store, "lexigram", "sagas_per_s")
        theirs = _value(table, store, "dbos", "sagas_per_s")
        ratio = "-" if not ours or not theirs else f"{ours / theirs:.1f}x"
        for system, name in SYSTEMS.items():
            entry = _entry(table, store, system)
            if "sagas_per_s" not in entry:
                lines.append(f"| {STORES[store]} | {name} | {_missing(entry)} ||||||||")
                continue
            p50, p99 = entry.get("resume_p50_ms"), entry.get("resume_p99_ms")
            seconds = float(entry["signal_n"]) / float(entry["sagas_per_s"])
            wrong = " (wrong outcomes!)" if entry.get("wrong") else ""
            lines.append(
                f"| {STORES[store]} | {name} | {entry['signal_n']:,.0f} | {seconds:,.1f} s "
                f"| {entry['sagas_per_s']:,.0f}{wrong} | {ratio if system == 'lexigram' else ''} "
                f"| {entry['signal_calls_per_s']:,.0f} "
                f"| {'the client' if _paced_by_client(entry) else 'the worker'} "
                f"| {_ms(p50).removesuffix(' ms')} / {_ms(p99)} "
                f"| {_ms(entry.get('loaded_resume_p50_ms'))} |"
            )
    return lines


def _memory_target(table: Results) -> tuple[str, str | None, bool | None]:
    parts, oks = [], []
    judged = True
    for store in _stores(table):
        entry = _entry(table, store, "lexigram")
        slope = _value(table, store, "lexigram", "rss_tenth_to_all_bytes_per_saga")
        if slope is None:
            continue
        grown = float(entry["rss_parked_bytes"]) - float(entry["rss_tenth_bytes"])
        blocks = float(entry.get("blocks_tenth_to_all_per_saga", 0))
        # round(...) + 0.0: a figure that rounds to zero is shown as 0, not as -0.
        text = (
            f"{STORES[store]} {round(slope, 1) + 0.0:,.1f} B "
            f"({round(grown / 2**20, 2) + 0.0:+,.2f} MB from a tenth to all "
            f"{entry['parked']:,.0f} parked; {round(blocks, 3) + 0.0:,.3f} Python blocks "
            "per saga)"
        )
        dbos = _value(table, store, "dbos", "rss_tenth_to_all_bytes_per_saga")
        if dbos is not None:
            text += f"; DBOS {_bytes(dbos)} per waiting workflow"
        parts.append(text)
        oks.append(slope < NOISE_BYTES)
        judged = judged and float(entry["parked"]) >= JUDGED_FROM
    if parts and not judged:
        parts.append(
            f"not judged with fewer than {JUDGED_FROM:,} parked: the noise (about 1 MB) "
            f"is then more than {NOISE_BYTES:g} B per saga"
        )
    return (
        "durable waits: a parked saga costs 0 bytes of worker memory (the worker's RSS "
        f"grows by under {NOISE_BYTES:g} B per parked saga, the noise)",
        "; ".join(parts) or None,
        all(oks) if oks and judged else None,
    )


def _store_target(table: Results) -> tuple[str, str | None, bool | None]:
    parts, oks = [], []
    for store in _stores(table):
        written = _value(table, store, "lexigram", "store_bytes_per_saga")
        if written is None:
            continue
        text = f"{STORES[store]} {_bytes(written)}"
        live = _value(table, store, "lexigram", "store_live_bytes_per_saga")
        if store == "postgres" and live is not None:
            text += f" ({_bytes(live)} after `VACUUM FULL`)"
        parts.append(text)
        oks.append(written < STORE_BYTES)
    return (
        f"durable waits: a parked saga takes under {STORE_BYTES / 1024:g} KB of store "
        "(growth as written, per parked saga)",
        "; ".join(parts) or None,
        all(oks) if oks else None,
    )


def _throughput_target(table: Results) -> tuple[str, str | None, bool | None]:
    parts, oks = [], []
    for store in _stores(table):
        ours = _value(table, store, "lexigram", "sagas_per_s")
        theirs = _value(table, store, "dbos", "sagas_per_s")
        if ours and theirs:
            parts.append(
                f"{STORES[store]} {ours / theirs:.1f}x ({ours:,.0f} vs {theirs:,.0f} sagas/s)"
            )
            oks.append(ours / theirs >= THROUGHPUT_TIMES)
            if _paced_by_client(_entry(table, store, "lexigram")):
                parts[-1] += ", lexigram's pace set by the client's signal calls"
    return (
        f"durable waits: at least {THROUGHPUT_TIMES:g}x DBOS's send → resume throughput "
        "(`signal` vs `DBOS.send`, until the sagas completed)",
        "; ".join(parts) or None,
        all(oks) if oks else None,
    )


def targets(table: Results) -> list[tuple[str, str | None, bool | None]]:
    """(target, measured, met) for the durable-waits targets; ``measured`` ``None``: not run."""
    wake = _value(table, "postgres", "lexigram", "resume_p50_ms")
    return [
        _memory_target(table),
        _store_target(table),
        (
            f"durable waits, PostgreSQL (notifications): wake-up p50 under {WAKE_MS:g} ms "
            "(`signal()` returned → the waiting step's body starts)",
            None if wake is None else _ms(wake),
            None if wake is None else wake < WAKE_MS,
        ),
        _throughput_target(table),
    ]


def _sizes(table: Results, system: str) -> dict[str, Any]:
    """The sizes one system's waits case ran with (its last round says)."""
    sizes: dict[str, Any] = _entry(table, "postgres", system).get("last", {}).get("sizes", {})
    return sizes or _entry(table, "sqlite", system).get("last", {}).get("sizes", {})


def _dbos_poll(table: Results) -> float | None:
    for (case, system), entry in table.items():
        if system == "dbos" and case.startswith("waits/sqlite/"):
            poll = entry.get("info", {}).get("notification_polling_sec")
            return None if poll is None else float(poll)
    return None


def _index_lines(table: Results) -> list[str]:
    """Of lexigram's store per parked saga on PostgreSQL, what its indexes take."""
    entry = _entry(table, "postgres", "lexigram")
    written, indexes = entry.get("store_bytes_per_saga"), entry.get("store_index_bytes_per_saga")
    if written is None or indexes is None:
        return []
    live = entry.get("store_live_bytes_per_saga")
    live_indexes = entry.get("store_live_index_bytes_per_saga")
    text = (
        f"Of lexigram's {_bytes(float(written))} per parked saga on PostgreSQL, the indexes "
        f"take {_bytes(float(indexes))}"
    )
    if live is not None and live_indexes is not None:
        text += f" (live: {_bytes(float(live_indexes))} of {_bytes(float(live))})"
    return [
        text + "; the rest is the row with its JSON document (and, as written, the row "
        "versions left for vacuum by the updates between the enqueue and the park).",
        "",
    ]


def section(table: Results, options: dict[str, Any], command: str) -> list[str]:
    """The page's *Durable waits* section (empty when no waits case ran)."""
    if not _stores(table):
        return []
    ours, theirs = _sizes(table, "lexigram"), _sizes(table, "dbos")
    concurrency = options.get("waits_concurrency", 200)
    rounds = options.get("waits_rounds", 1)
    poll = _dbos_poll(table)
    round_text = "one round" if rounds == 1 else f"{rounds} rounds (medians)"
    interval_ms = float(ours.get("interval", 0.05)) * 1000
    return [
        "## Durable waits: parked sagas, signals, timers",
        "",
        'Sagas whose step 2 waits for a signal (`wait_for="go"`) park in the store while a '
        "worker process serves and a client process signals them "
        "(`bench/systems/waits_bench.py`; per system one SQLite file, WAL, "
        "`synchronous=FULL`, or one PostgreSQL database on the same server). "
        f"**lexigram**: the worker calls `serve(concurrency={concurrency})`; the client "
        "enqueues the sagas (the worker claims each, runs step 1 and parks it) and calls "
        '`manager.signal(saga_id, "go", ...)`. **DBOS**: the worker launches DBOS and '
        "starts the workflows (`DBOS.start_workflow_async`); each runs a step and waits in "
        '`DBOS.recv_async("go")`; the client calls `DBOSClient.send_async(workflow_id, '
        '..., "go")`. A DBOS workflow waits inside its worker (and DBOS starts about 100 '
        f"a second here), so DBOS waits with {theirs.get('n', 0):,} workflows, lexigram "
        f"with {ours.get('n', 0):,} parked sagas. The waits cases ran in {round_text} of "
        f"`{command}`.",
        "",
        "- **Worker memory**: the worker's resident set size (`VmRSS`, after "
        "`gc.collect()` and `malloc_trim(0)`, so that memory freed by sagas that ran and "
        "kept by the allocator does not count; asked for over the worker's standard input) "
        "after a warm-up (sagas parked, signalled and completed: five times the worker's "
        "concurrency for lexigram), then with a tenth of the sagas parked, then with all "
        "of them. *Per parked saga*: the growth from a tenth to all over the sagas parked "
        "in between (in brackets: from before to all, which includes caches that fill once, "
        "such as SQLite's page cache of 2 MB). *Python blocks*: the same growth of "
        "`sys.getallocatedblocks()`; anything kept per saga would add at least one block "
        "per saga. *On a timer*: "
        f"{ours.get('timer_n', 0):,} more sagas (DBOS: {theirs.get('timer_n', 0):,}) "
        "parked on a one-hour timer (lexigram `delay=3600`, DBOS "
        "`DBOS.sleep_async(3600)`), the growth per saga (below zero: the RSS shrank).",
        "- **Store per parked saga**: SQLite, the file and its WAL after "
        "`PRAGMA wal_checkpoint(TRUNCATE)`; PostgreSQL, `pg_total_relation_size` summed "
        "over the system's tables (lexigram: the saga table, `_signals` and `_meta`; DBOS: "
        "its `dbos` schema), from a baseline taken after `VACUUM FULL` to all parked, as "
        "written (with the row versions updates left for vacuum) and *live* (after another "
        "`VACUUM FULL`); over the number parked.",
        f"- **Send → resume throughput**: {ours.get('signal_n', 0):,} parked sagas (DBOS: "
        f"{theirs.get('signal_n', 0):,}) signalled by the client from "
        f"{ours.get('tasks', 16)} coroutines as fast as it can; sagas per second from the "
        "first signal call to the end of the last saga's step 3. Beside it, the rate of "
        "the signal calls alone, and what set the pace (*the client*: the sagas completed "
        f"at {KEEPING_UP:.0%} of the rate of the signal calls or more, so the figure is the "
        "client's as much as the worker's).",
        f"- **Signal → resume latency**: {ours.get('latency_n', 0):,} parked sagas (after "
        f"5 left out) signalled one every {interval_ms:g} ms on a fixed schedule, so the "
        "worker is idle when each arrives: from the return of the signal call (the signal "
        "is durable) to the start of the waiting step's body (`time.time()` in both "
        "processes, one machine). *Under load*: the same during the throughput phase "
        "(mostly time in line).",
        "",
        *memory_table(table),
        "",
        *_index_lines(table),
        *signal_table(table),
        "",
        "How a worker hears of a signal: lexigram on PostgreSQL by `LISTEN/NOTIFY`, on "
        "SQLite by watching the file's commit counter (every 20 ms after a change, slowing "
        "to 100 ms when quiet); DBOS on PostgreSQL by `LISTEN/NOTIFY`, on SQLite by "
        "querying the messages of every waiting workflow, one query each, every "
        "`notification_listener_polling_interval_sec` (default 1 s; "
        f"{f'{poll:g} s' if poll else 'shortened'} here, as the service cases shorten "
        "DBOS's queue polling), so each round of polls takes longer the more workflows "
        "wait. The client, the worker and the database server share the machine's cores: "
        "the send → resume figures are the three together.",
        "",
    ]
