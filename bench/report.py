"""Turn ``bench/results/latest.json`` into tables, ``docs/benchmarks.md`` and the plot.

``python -m bench.report RESULTS.json [--docs docs/benchmarks.md --png docs/x.png]``
prints the tables; with ``--docs``/``--png`` it also writes the page and the plot (needs
matplotlib: run it with the peers' virtualenv). Every figure is the median over the
rounds of one run; ratios compare medians of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import report_otel, report_service, report_waits

SYSTEM_NAMES = {
    "lexigram": "lexigram",
    "dbos": "DBOS",
    "sagaz": "sagaz",
    "handwritten": "hand-written",
}
STORE_NAMES = {"memory": "in memory", "sqlite": "SQLite", "postgres": "PostgreSQL"}
WORKLOAD_NAMES = {"run": "3-step saga", "compensate": "compensation (step 3 fails)"}
PEERS = ("dbos", "sagaz", "handwritten")
KB = 4096

Results = dict[tuple[str, str], dict[str, Any]]


# ---------------------------------------------------------------------- aggregation


def aggregate(raw: list[dict[str, Any]]) -> Results:
    """Medians per (case, system) over the rounds that produced a result."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    notes: dict[tuple[str, str], str] = {}
    failed: dict[tuple[str, str], int] = defaultdict(int)
    for result in raw:
        key = (result["case"], result["system"])
        if "error" in result:
            notes[key] = "error: " + result["error"]
            failed[key] += 1
        elif "unavailable" in result:
            notes[key] = "not available: " + result["unavailable"]
        else:
            groups[key].append(result)
    table: Results = {}
    for key, note in notes.items():
        table[key] = {"note": note}
    for key, rows in groups.items():
        first = rows[0]
        entry: dict[str, Any] = {
            "workload": first["workload"],
            "store": first["store"],
            "inflight": first["inflight"],
            "rounds": len(rows),
            "failed": failed[key],
            "wrong": sum(int(r.get("wrong", 0)) for r in rows),
            "info": first.get("info", {}),
            "last": rows[-1],
        }
        for field in (
            "sagas_per_s",
            "bytes_per_saga",
            "rss_bytes_per_saga",
            "fresh_seconds",
            "recovery_seconds",
            "ratio",
            "n",
            *report_service.FIELDS,
            *report_waits.FIELDS,
            *report_otel.FIELDS,
        ):
            values = [float(r[field]) for r in rows if field in r]
            if values:
                entry[field] = statistics.median(values)
                entry[f"{field}_all"] = values
        if "sagas_per_s" in entry:
            entry["us_per_saga"] = 1e6 / entry["sagas_per_s"]
        if "ran_twice" in first:
            entry["ran_twice"] = max(int(r["ran_twice"]) for r in rows)
            entry["missing_steps"] = max(int(r["missing_steps"]) for r in rows)
        table[key] = entry
    return table


def _get(table: Results, case: str, system: str, field: str) -> float | None:
    value = table.get((case, system), {}).get(field)
    return float(value) if value is not None else None


# ---------------------------------------------------------------------- formatting


def _rate(entry: dict[str, Any] | None, *, sequential: bool) -> str:
    if not entry:
        return "-"
    if "note" in entry:
        return "n/a"
    text = f"{entry['sagas_per_s']:,.0f}"
    if sequential:
        text += f" ({_us(entry['us_per_saga'])})"
    if entry["wrong"]:
        text += " (wrong outcomes!)"
    if entry.get("failed"):
        text += " *"
    return text


def _us(us: float) -> str:
    if us < 10:
        return f"{us:.2f} µs"
    if us < 1000:
        return f"{us:.0f} µs"
    return f"{us / 1000:.1f} ms"


def _times(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} B"


def throughput_table(table: Results) -> list[str]:
    cases = sorted(
        {
            (e["workload"], e["store"], e["inflight"], case)
            for (case, _), e in table.items()
            if "workload" in e and e["workload"] in WORKLOAD_NAMES
        },
        key=lambda c: (list(STORE_NAMES).index(c[1]), c[0] != "run", c[2]),
    )
    lines = [
        "| workload | store | in flight | lexigram | DBOS | sagaz | hand-written "
        "| lexigram ÷ DBOS | lexigram ÷ sagaz | lexigram time ÷ hand-written time |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workload, store, inflight, case in cases:
        sequential = inflight == 1
        cells = [_rate(table.get((case, s)), sequential=sequential) for s in SYSTEM_NAMES]
        ours = _get(table, case, "lexigram", "sagas_per_s")
        ratios = []
        for peer in PEERS:
            theirs = _get(table, case, peer, "sagas_per_s")
            if ours is None or theirs is None:
                ratios.append("-")
            elif peer == "handwritten":
                ratios.append(_times(theirs / ours))
            else:
                ratios.append(_times(ours / theirs))
        lines.append(
            f"| {WORKLOAD_NAMES[workload]} | {STORE_NAMES[store]} | {inflight} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(ratios)
            + " |"
        )
    return lines


def memory_table(table: Results) -> list[str]:
    lines = [
        "| system | store | suspended sagas | traced (tracemalloc) per saga | RSS per saga |",
        "|---|---|--:|--:|--:|",
    ]
    rows = [(key, e) for key, e in table.items() if e.get("workload") == "memory"]
    for (_case, system), entry in sorted(rows, key=lambda r: (r[0][0], r[0][1])):
        lines.append(
            f"| {SYSTEM_NAMES[system]} | {STORE_NAMES[entry['store']]} | {entry['n']:,.0f} | "
            f"{_bytes(entry.get('bytes_per_saga'))} | {_bytes(entry.get('rss_bytes_per_saga'))} |"
        )
    return lines


def recovery_table(table: Results) -> list[str]:
    lines = [
        "| store | sagas | fresh run, 2 workers | recovery, 2 workers | recovery ÷ fresh "
        "| completed steps run again | resumed per worker (last round) |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for _key, entry in sorted(table.items()):
        if entry.get("workload") != "recovery":
            continue
        per_worker = " + ".join(f"{n:,}" for n in entry["last"].get("resumed_per_worker", []))
        lines.append(
            f"| {STORE_NAMES[entry['store']]} | {entry['n']:,.0f} "
            f"| {entry['fresh_seconds']:.2f} s | {entry['recovery_seconds']:.2f} s "
            f"| {entry['ratio']:.2f} | {entry['ran_twice']} | {per_worker} |"
        )
    return lines


# ---------------------------------------------------------------------- targets


def _ratio_text(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.1f}x ({ours:,.0f} vs {theirs:,.0f} sagas/s)"


def targets(table: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target of the benchmark issue; ``None``: not run."""
    found: list[tuple[str, str, bool | None]] = []

    def check(name: str, measured: str | None = None, *, ok: bool | None = None) -> None:
        found.append((name, measured or "not measured", ok))

    lex = _get(table, "run/memory/1", "lexigram", "sagas_per_s")
    hand = _get(table, "run/memory/1", "handwritten", "sagas_per_s")
    sagaz = _get(table, "run/memory/1", "sagaz", "sagas_per_s")
    name = "in memory, sequential `execute`: at most 20x the hand-written code's time"
    if lex and hand:
        times = f"{hand / lex:.1f}x ({_us(1e6 / lex)} vs {_us(1e6 / hand)})"
        check(name, times, ok=hand / lex <= 20)
    else:
        check(name)
    name = "in memory, sequential `execute`: at least 10x faster than sagaz"
    if lex and sagaz:
        times = f"{lex / sagaz:.2f}x ({_us(1e6 / lex)} vs {_us(1e6 / sagaz)})"
        check(name, times, ok=lex / sagaz >= 10)
    else:
        check(name)

    lex = _get(table, "run/sqlite/1", "lexigram", "sagas_per_s")
    dbos = _get(table, "run/sqlite/1", "dbos", "sagas_per_s")
    name = "SQLite, same durability, sequential: at least 5x DBOS's throughput"
    if lex and dbos:
        check(name, _ratio_text(lex, dbos), ok=lex / dbos >= 5)
    else:
        check(name)
    lex = _get(table, "run/sqlite/100", "lexigram", "sagas_per_s")
    dbos = _get(table, "run/sqlite/50", "dbos", "sagas_per_s")
    name = "SQLite: lexigram with 100 in flight at least 50x DBOS with 50 in flight"
    if lex and dbos:
        check(name, _ratio_text(lex, dbos), ok=lex / dbos >= 50)
    else:
        check(name)

    lex = _get(table, "run/postgres/64", "lexigram", "sagas_per_s")
    dbos = _get(table, "run/postgres/64", "dbos", "sagas_per_s")
    name = "PostgreSQL, 64 in flight: at least 3,000 durable steps/s per worker process"
    if lex:
        check(name, f"{lex * 3:,.0f} steps/s ({lex:,.0f} sagas/s x 3)", ok=lex * 3 >= 3000)
    else:
        check(name)
    name = "PostgreSQL, 64 in flight: at least 10x DBOS on the same server"
    if lex and dbos:
        check(name, _ratio_text(lex, dbos), ok=lex / dbos >= 10)
    else:
        check(name)

    for store in ("memory", "sqlite"):
        traced = _get(table, f"memory/{store}/1", "lexigram", "bytes_per_saga")
        rss = _get(table, f"memory/{store}/1", "lexigram", "rss_bytes_per_saga")
        name = f"at most 4 KB per suspended in-flight saga ({STORE_NAMES[store]} store)"
        if traced is not None and rss is not None:
            check(name, f"{traced:,.0f} B traced, {rss:,.0f} B RSS", ok=traced <= KB)
        else:
            check(name)
    for store in ("sqlite", "postgres"):
        entry = next((e for (c, _), e in table.items() if c.startswith(f"recovery/{store}/")), {})
        name = f"recovering 10,000 sagas takes at most 2x running them fresh ({STORE_NAMES[store]})"
        if "ratio" in entry:
            text = (
                f"{entry['ratio']:.2f}x ({entry['recovery_seconds']:.2f} s vs "
                f"{entry['fresh_seconds']:.2f} s for {entry['n']:,.0f} sagas; "
                f"{entry['ran_twice']} completed steps ran again)"
            )
            if entry["n"] < 10_000:
                check(name, text + "; fewer sagas than the target names", ok=None)
            else:
                check(name, text, ok=entry["ratio"] <= 2 and entry["ran_twice"] == 0)
        else:
            check(name)
    for name, measured, ok in [
        *report_service.targets(table),
        *report_waits.targets(table),
        *report_otel.targets(table),
    ]:
        check(name, measured, ok=ok)
    return found


def targets_table(table: Results) -> list[str]:
    lines = ["| target | measured (medians, one run) | met |", "|---|---|:-:|"]
    for name, measured, ok in targets(table):
        mark = "-" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {name} | {measured} | {mark} |")
    return lines


# ---------------------------------------------------------------------- plot


def plot(table: Results, path: Path, rounds: int) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "lexigram": "#1f77b4",
        "dbos": "#d62728",
        "sagaz": "#2ca02c",
        "handwritten": "#7f7f7f",
    }
    styles = {"memory": "-", "sqlite": "--", "postgres": ":"}
    markers = {"memory": "o", "sqlite": "s", "postgres": "^"}
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for (_case, system), entry in table.items():
        if entry.get("workload") == "run" and "sagas_per_s" in entry:
            series[system, entry["store"]].append((entry["inflight"], entry["sagas_per_s"]))
    fig, ax = plt.subplots(figsize=(10, 6.2), dpi=110)
    order = list(SYSTEM_NAMES), list(STORE_NAMES)
    for (system, store), points in sorted(
        series.items(), key=lambda s: (order[0].index(s[0][0]), order[1].index(s[0][1]))
    ):
        points.sort()
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            linestyle=styles[store],
            marker=markers[store],
            color=colors[system],
            linewidth=2,
            label=f"{SYSTEM_NAMES[system]} — {STORE_NAMES[store]}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    levels = sorted({p[0] for pts in series.values() for p in pts})
    ax.set_xticks(levels)
    ax.set_xticklabels([str(x) for x in levels])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("sagas in flight (concurrent execute / workflow calls, one process)")
    ax.set_ylabel("sagas per second (log scale)")
    ax.set_title(f"3-step saga throughput by sagas in flight (median of {rounds} rounds)")
    ax.grid(visible=True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------- the page


def _machine_lines(machine: dict[str, Any], load_at_end: float) -> list[str]:
    pg = machine["postgres"]
    pg_text = (
        f"{pg['server_version']} (local server on 127.0.0.1, `fsync={pg['fsync']}`, "
        f"`synchronous_commit={pg['synchronous_commit']}`)"
        if pg.get("available")
        else f"not reachable ({pg.get('reason')}): PostgreSQL cases skipped"
    )
    packages = machine["packages"]
    return [
        "| | |",
        "|---|---|",
        f"| date | {machine['date']} |",
        f"| CPU | {machine['nproc']} cores (`nproc`), {machine['cpu']} |",
        f"| memory | {machine['memory_gib']} GiB |",
        f"| OS | {machine['os']} |",
        f"| load average (1 min) | {machine.get('load_average', 0):.2f} at the start, "
        f"{load_at_end:.2f} at the end of the run |",
        f"| Python | {machine['python']} ({machine['python_implementation']}) |",
        f"| SQLite | {machine['sqlite']} (`sqlite3.sqlite_version`) |",
        f"| PostgreSQL | {pg_text} |",
        f"| lexigram-events | {packages['lexigram-events']} at commit `{machine['git_commit']}`"
        + (" (with uncommitted changes in `src/`)" if machine.get("git_dirty") else "")
        + " |",
        f"| DBOS | dbos {packages['dbos']} (SQLAlchemy {packages['sqlalchemy']}, "
        f"psycopg {packages['psycopg']}) |",
        f"| sagaz | {packages['sagaz']} |",
        f"| asyncpg | {packages['asyncpg']} |",
    ]


def _dbos_sqlite_note(table: Results) -> str:
    for (_case, system), entry in table.items():
        if system == "dbos" and entry.get("store") == "sqlite" and "info" in entry:
            sqlite = entry["info"].get("sqlite", {})
            if sqlite:
                forced = (
                    "set by the harness on each of DBOS's connections"
                    if sqlite.get("synchronous_set_by_harness")
                    else "SQLite's default, unchanged"
                )
                return (
                    "read back through DBOS's own engine: "
                    f"`journal_mode={sqlite['journal_mode']}`, "
                    f"`synchronous={sqlite['synchronous']}` ({forced})"
                )
    return "not measured in this run"


def _profile_lines(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return []
    lines = [
        "## Where lexigram's time goes",
        "",
        "Sampled with py-spy (1 kHz, every thread, idle time included) while the workload "
        "ran in its own process (start-up and warm-up included): the functions with the most "
        "self time, as a share of that thread's samples, and their share with callees. "
        "Full reports: `bench/results/profile-*.txt` after "
        '`make bench BENCH_ARGS="--profile"`.',
        "",
    ]
    for target in profile.get("targets", []):
        if "error" in target:
            lines += [f"### {target['title']}", "", "not profiled: " + target["error"][-200:], ""]
            continue
        lines += [f"### {target['title']}", ""]
        for thread, data in target["threads"].items():
            if thread != "MainThread" and not thread.startswith("lexigram"):
                continue
            limit = 12 if thread == "MainThread" else 6
            lines += [
                f"Thread `{thread}` ({data['samples']:,} samples):",
                "",
                "| function | self | with callees |",
                "|---|--:|--:|",
            ]
            for row in data["top"][:limit]:
                lines.append(
                    f"| `{row['function']}` | {row['self_pct']:.1f} % | {row['total_pct']:.1f} % |"
                )
            lines.append("")
    return lines


def _allocation_lines(table: Results) -> list[str]:
    entry = table.get(("memory/memory/1", "lexigram"), {})
    sites = entry.get("last", {}).get("top_allocations", [])
    if not sites:
        return []
    lines = [
        "Where a suspended lexigram saga's memory is allocated (in-memory store, last round; "
        "tracemalloc, growth per saga by source line; the benchmark's own step and gate "
        "frames are in it as they are in every system's figure):",
        "",
        "| source line | bytes per saga | blocks per saga |",
        "|---|--:|--:|",
    ]
    for site in sites[:12]:
        where = site["site"]
        if "/bench/" in where:  # older results kept the absolute path of the harness
            where = "bench/" + where.split("/bench/", 1)[1]
        lines.append(
            f"| `{where}` | {site['bytes_per_saga']:,.0f} | {site['blocks_per_saga']:.1f} |"
        )
    return [*lines, ""]


def _raw_lines(raw: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | system | every round |",
        "|---|---|---|",
    ]
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in raw:
        key = (r["case"], SYSTEM_NAMES[r["system"]])
        if "error" in r or "unavailable" in r:
            grouped[key].append("n/a")
        elif r.get("workload") == "service":
            grouped[key].append(
                f"{r['sagas_per_s']:,.0f}/s (pickup {r['pickup_p50_ms']:.1f}"
                f"/{r['pickup_p99_ms']:.1f} ms)"
            )
        elif r.get("workload") == "waits":
            grouped[key].append(
                f"{r['sagas_per_s']:,.0f}/s (resume {r['resume_p50_ms']:.1f}"
                f"/{r['resume_p99_ms']:.1f} ms, {r['rss_tenth_to_all_bytes_per_saga']:,.0f} B RSS "
                f"and {r['store_bytes_per_saga']:,.0f} B stored per parked saga)"
            )
        elif r.get("workload") in ("otel", "otel-instructions"):
            unit = "/s" if r["workload"] == "otel" else " instructions per saga"
            suffix = "_sagas_per_s" if r["workload"] == "otel" else "_instructions_per_saga"
            values = "/".join(f"{r[f'{v}{suffix}']:,.0f}" for v in ("off", "sdk", "noop"))
            grouped[key].append(f"A/B/C {values}{unit}")
        elif "sagas_per_s" in r:
            grouped[key].append(f"{r['sagas_per_s']:,.0f}/s")
        elif "bytes_per_saga" in r:
            grouped[key].append(f"{r['bytes_per_saga']:,.0f} B")
        elif "recovery_seconds" in r:
            grouped[key].append(f"{r['fresh_seconds']:.2f} s → {r['recovery_seconds']:.2f} s")
    for (case, system), values in grouped.items():
        lines.append(f"| {case} | {system} | {', '.join(values)} |")
    return lines


def page(report: dict[str, Any], table: Results, png_name: str | None) -> str:
    machine = report["machine"]
    options = report["options"]
    rounds = options["rounds"]
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py from bench/results/latest.json: edit the generator, "
        "not this page. -->",
        "",
        "lexigram-events measured side by side with "
        "[DBOS Transact](https://pypi.org/project/dbos/) (durable workflows), "
        "[sagaz](https://pypi.org/project/sagaz/) (in-memory sagas) and "
        "hand-written asyncio code, on the same machine, in the same run: every system runs "
        f"the same workload in its own process, systems interleaved within each of {rounds} "
        "rounds (A, B, C, then B, C, A, ...). Figures are medians over the rounds; a ratio "
        "compares two medians of this run.",
        "",
        "## How to run",
        "",
        "```sh",
        "make bench                           # the full run (its duration: below)",
        'make bench BENCH_ARGS="--quick"      # shorter batches, 2,000-saga recovery: minutes',
        'make bench BENCH_ARGS="--profile"    # also profile lexigram (py-spy, pyinstrument)',
        "```",
        "",
        f"This page comes from `{report['command']}` "
        f"(the same as `{report['direct_command']}`), which took "
        f"{report['duration_seconds'] / 60:.1f} minutes.",
        "",
        "`bench/run.py` creates `bench/.venv-peers`, a virtualenv of its own, and installs into "
        "it the peers from PyPI (pinned in `bench/requirements-peers.txt`) and this project "
        "(editable); the project's dependencies do not change. PostgreSQL cases use "
        "`postgresql://postgres@127.0.0.1:5432/test` (or `BENCH_PG_DSN`) to create the "
        "databases `lexigram_bench`, `lexigram_recovery`, `lexigram_service`, `lexigram_waits`, "
        "`dbos_bench`, `dbos_service` and `dbos_waits`, and are skipped with "
        "a note when no server answers. Raw results: `bench/results/latest.json`.",
        "",
        "## Machine",
        "",
        *_machine_lines(machine, report.get("load_average_at_end", 0.0)),
        "",
        "## Targets",
        "",
        *targets_table(table),
        "",
        "## Throughput",
        "",
        "Sagas per second (and, for sequential runs, the time of one saga). Ratios: "
        "*lexigram ÷ peer* is lexigram's throughput over the peer's (above 1: lexigram is "
        "faster); the last column is lexigram's time per saga over the hand-written code's.",
        "",
        *throughput_table(table),
        "",
    ]
    if any(e.get("failed") for e in table.values()):
        out += [
            "\\* median of the rounds that ran: another round of this case failed "
            "(see *Failed runs* below).",
            "",
        ]
    if png_name:
        out += [f"![Throughput against sagas in flight]({png_name})", ""]
    out += [
        "## Memory per suspended saga",
        "",
        "Sagas started and left waiting on an `asyncio.Event` inside step 1 (in flight, "
        "suspended); growth of the memory traced by `tracemalloc`, and in a separate phase "
        "of the resident set size, divided by the number of sagas. For lexigram the in-memory "
        "store's copy of each record is included.",
        "",
        *memory_table(table),
        "",
        *_allocation_lines(table),
        "## Recovery",
        "",
        "A process starts the sagas, each blocking in step 2, and is killed with SIGKILL once "
        "all of them are there: they stay `RUNNING`, leased to a dead worker. Two new worker "
        "processes then call `recover()` at the same moment; the time runs until every saga "
        "they resumed is terminal. *Fresh*: the same two workers run as many new sagas (half "
        "each, all in flight). A recovered saga has step 1 done: recovery claims it and runs "
        "steps 2 and 3. Each step appends to a log of its own process; the check counts "
        "the steps whose completion was durable yet ran again (it must be 0; the step in "
        "flight at the crash runs again, as documented). Every saga ends `COMPLETED`.",
        "",
        *recovery_table(table),
        "",
        *report_service.section(table, options, machine["nproc"]),
        *report_waits.section(table, options, report["command"]),
        *report_otel.section(table, options, machine["nproc"]),
        "## What runs",
        "",
        "- **The saga**: three steps, each updating the context (`reserve`, `charge`, "
        "`confirm`), each with a compensation. *Compensation*: step 3 fails (lexigram: "
        "`SagaStepResult.fail`, a business failure, not retried; DBOS, sagaz and the "
        "hand-written code: an exception), the two completed steps are compensated in "
        "reverse order.",
        "- **Sequential**: one saga after the other (`await manager.execute(...)` in a loop). "
        "**In flight N**: N coroutines doing that loop concurrently in one process and one "
        "event loop, sharing one counter; the time is the wall time of the whole batch. The "
        "batch size is chosen so that it lasts about "
        f"{options['seconds']:g} s, after a warm-up of doubling batches.",
        "- **lexigram**: `SagaManager` with `InMemorySagaStore`, `SQLiteSagaStore(path, "
        f'synchronous="{options["synchronous"]}", journal_mode="{options["journal_mode"]}")` '
        "on a fresh file, or `PostgresSagaStore(dsn)` (default pool) on a fresh database; "
        "default `SagaConfig`. A completed saga is 4 durable writes (the start and one per "
        "step, the last with the final status).",
        "- **DBOS**: an async `@DBOS.workflow()` calling three async `@DBOS.step()` "
        "functions; compensation by `try`/`except` in the workflow calling undo steps. In "
        "flight = concurrent workflow calls on the event loop (no queue). Its system database "
        "is a fresh SQLite file or a fresh PostgreSQL database on the same server. SQLite: "
        "DBOS itself leaves SQLite's defaults (`journal_mode=DELETE`, `synchronous=FULL`); "
        "for equal durability the file is created in the journal mode lexigram uses, "
        f"and the values in effect were {_dbos_sqlite_note(table)}. "
        "Log level WARNING.",
        "- **sagaz**: a declarative `Saga` with `@action`/`@compensate` (steps 2 and 3 "
        "`depends_on` the previous one so they run in order); `SagaConfig(metrics=False, "
        "logging=False, tracing=False)` with its default in-memory storage, its fastest "
        "setting; one `Saga` instance per worker coroutine, reused.",
        "- **hand-written**: an `async def` awaiting three step functions that update a "
        "dict, with a `try`/`except` and an undo list. No persistence, no records, no retries.",
        "- **Memory**: 10,000 suspended sagas (DBOS: fewer, it starts about 150 a second); "
        "lexigram with the in-memory store (records included) and with SQLite.",
        "",
        "Caveats: one machine, one run; a 2-core machine runs the database server, the "
        "benchmark and (for DBOS) its background threads on the same cores. "
        "The in-memory stores keep every finished saga, as they do in an application.",
        "",
    ]
    if report.get("skipped"):
        out += ["Skipped:", ""]
        out += [f"- `{s['case']}`: {s['reason']}" for s in report["skipped"]]
        out.append("")
    notes = [(k, e["note"]) for k, e in table.items() if "note" in e]
    if notes:
        out += ["Not measured:", ""]
        out += [
            f"- `{case}` {SYSTEM_NAMES[system]}: {note[:300]}" for (case, system), note in notes
        ]
        out.append("")
    failures = [r for r in report["results"] if "error" in r]
    if failures:
        out += [
            "Failed runs (each process's whole output is in `bench/results/errors/`):",
            "",
        ]
        for r in failures:
            last = r["error"].rsplit(" | ", 1)[-1][:240]
            out.append(
                f"- round {r['round'] + 1}, `{r['case']}`, {SYSTEM_NAMES[r['system']]}: {last}"
            )
        out.append("")
    out += _profile_lines(report.get("profile"))
    out += ["## Every round", "", *_raw_lines(report["results"]), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("results", type=Path)
    parser.add_argument("--docs", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    report = json.loads(args.results.read_text())
    table = aggregate(report["results"])
    print()
    print("\n".join(targets_table(table)))
    print()
    print("\n".join(throughput_table(table)))
    print()
    print("\n".join(memory_table(table)))
    print()
    print("\n".join(recovery_table(table)))
    print()
    print("\n".join(report_service.service_table(table)))
    print()
    print("\n".join(report_waits.memory_table(table)))
    print()
    print("\n".join(report_waits.signal_table(table)))
    print()
    print("\n".join(report_otel.timed_table(table)))
    print()
    print("\n".join(report_otel.instructions_table(table)))
    png_name = None
    if args.png:
        plot(table, args.png, report["options"]["rounds"])
        png_name = os.path.relpath(args.png, args.docs.parent if args.docs else Path.cwd())
        print(f"\nwrote {args.png}")
    if args.docs:
        args.docs.write_text(page(report, table, png_name))
        print(f"wrote {args.docs}")


if __name__ == "__main__":
    main()
