"""Run the benchmarks: lexigram-events side by side with DBOS, sagaz and hand-written code.

``make bench`` runs this file with the project's virtualenv. It:

1. creates ``bench/.venv-peers`` (a separate virtualenv, git-ignored) and installs into it
   the peers from PyPI (``bench/requirements-peers.txt``) and this project, editable.
   The project's own dependencies never change;
2. describes the machine (``bench/machine.py``) and checks that PostgreSQL answers (its
   cases are skipped, with a note, when it does not);
3. runs every case in rounds: each (system, case) is one process of the peers'
   virtualenv printing one JSON line; within a round the systems of a case run one after
   the other, in an order rotated every round (A,B,C then B,C,A ...). A service case is
   one process per (system, store) of ``bench/systems/service_bench.py``, which starts the
   enqueuer and the worker processes itself and reports one result per worker count
   (1, 2, 4), each kept as a case of its own (``service/<store>/<workers>``). A waits case
   is one process per (system, store) of ``bench/systems/waits_bench.py`` (a worker and a
   client process of its own, many parked sagas): it runs in the first
   ``--waits-rounds`` rounds only (one by default: parking 100,000 sagas takes minutes).
   An otel case (``otel/sqlite/<in flight>``) is one process of
   ``bench/systems/otel_bench.py`` timing the SQLite workload without instrumentation,
   with the OpenTelemetry SDK exporting nowhere and with the API's no-op providers, in
   turn (``--otel-batches`` cycles); ``otel-instructions/memory/1`` counts the same
   variants' instructions per saga with callgrind, in the first round only (the counts do
   not change from round to round);
4. saves every raw result in ``bench/results/latest.json``, then writes
   ``docs/benchmarks.md`` and ``docs/benchmarks-throughput.png`` from it (``bench/report.py``,
   medians over the rounds and the ratio of lexigram to each peer).

Options (``make bench BENCH_ARGS="--quick"``): ``--quick`` (shorter batches, fewer
levels, 2,000 sagas for recovery and memory, fewer sagas and a shorter idle window for
the service cases, 10,000 parked sagas instead of 100,000 for the waits cases, fewer
otel cycles: a few minutes), ``--rounds``, ``--seconds``, ``--only sqlite,recovery``,
``--only waits`` or ``--only otel`` (cases whose key contains one of the words; such a
partial run writes ``latest-partial.json`` and leaves the docs alone), ``--profile``
(also profile lexigram's in-memory and SQLite paths), ``--pg-dsn`` (or ``BENCH_PG_DSN``),
the sizes of the waits cases (``--waits-n`` and the others: ``--help``) and
``--otel-batches``.
Everything but the final docs lives under ``bench/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS_VENV = BENCH / ".venv-peers"
REQUIREMENTS = BENCH / "requirements-peers.txt"
RESULTS = BENCH / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks-throughput.png"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

MODULES = {
    "handwritten": "bench.systems.handwritten_bench",
    "lexigram": "bench.systems.lexigram_bench",
    "sagaz": "bench.systems.sagaz_bench",
    "dbos": "bench.systems.dbos_bench",
}


@dataclass(frozen=True, slots=True)
class Case:
    """One workload on one store at one level of concurrency, run by several systems."""

    workload: str
    store: str
    inflight: int
    systems: tuple[str, ...]
    n: int = 0

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.store}/{self.inflight}"


SERVICE_WORKERS = (1, 2, 4)
WAITS_CONCURRENCY = 200
"""``serve(concurrency=...)`` of the waits cases' lexigram worker."""
OTEL_LEVELS = (1, 50)
"""Sagas in flight of the otel cases: sequential (fsync-bound) and batched (CPU-bound)."""
FIRST_ROUND_ONLY = ("otel-instructions",)
"""Workloads run in the first round only: instruction counts are the same every round."""


def service_dbos_n(service_n: int) -> int:
    """DBOS runs a tenth of lexigram's sagas in the service cases (it runs them ~10x slower)."""
    return max(service_n // 10, 100)


def waits_plan(args: argparse.Namespace, system: str) -> dict[str, int]:
    """The sizes of a waits case for ``system``.

    DBOS parks fewer sagas: it starts about 100 a second here, and each waits in its
    worker's memory.
    """
    if system == "lexigram":
        n, signal_n = args.waits_n, args.waits_signal_n
    else:
        n = args.waits_dbos_n
        signal_n = n // 2
    return {
        "n": n,
        "signal_n": signal_n,
        "latency_n": args.waits_latency_n,
        "timer_n": min(args.waits_timer_n, n // 2),
    }


def build_cases(
    *, quick: bool, memory_n: int, recovery_n: int, service_n: int, waits_n: int
) -> list[Case]:
    levels = [1, 50, 100] if quick else [1, 10, 50, 100]
    pg_levels = sorted({*levels, 64})
    in_memory = ("handwritten", "lexigram", "sagaz")
    durable = ("lexigram", "dbos")
    cases: list[Case] = []
    cases += [Case("run", "memory", k, in_memory) for k in levels]
    cases.append(Case("compensate", "memory", 1, in_memory))
    cases += [Case("run", "sqlite", k, durable) for k in levels]
    cases.append(Case("compensate", "sqlite", 1, durable))
    cases += [Case("run", "postgres", k, durable) for k in pg_levels]
    cases.append(Case("compensate", "postgres", 1, durable))
    cases.append(Case("memory", "memory", 1, in_memory, memory_n))
    cases.append(Case("memory", "sqlite", 1, ("lexigram",), memory_n))
    # DBOS starts ~150 workflows a second here: fewer suspended sagas keep its case short.
    cases.append(Case("memory", "sqlite", 1, ("dbos",), max(memory_n // 10, 200)))
    cases.append(Case("recovery", "sqlite", recovery_n, ("lexigram",), recovery_n))
    cases.append(Case("recovery", "postgres", recovery_n, ("lexigram",), recovery_n))
    # One process per (system, store) runs the three worker counts in turn.
    cases += [
        Case("service", store, max(SERVICE_WORKERS), durable, service_n)
        for store in ("postgres", "sqlite")
    ]
    cases += [
        Case("waits", store, WAITS_CONCURRENCY, durable, waits_n)
        for store in ("postgres", "sqlite")
    ]
    # What OpenTelemetry instrumentation costs (three variants in one process).
    cases += [Case("otel", "sqlite", k, ("lexigram",)) for k in OTEL_LEVELS]
    cases.append(Case("otel-instructions", "memory", 1, ("lexigram",)))
    return cases


# ---------------------------------------------------------------------- the peers' virtualenv


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_peers_venv(*, skip_install: bool) -> Path:
    """Create ``bench/.venv-peers`` and install the peers and the project; return its python."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    if python.exists() and (
        skip_install or (stamp.exists() and stamp.read_text() == _fingerprint())
    ):
        return python
    if not python.exists():
        print(f"creating {PEERS_VENV.relative_to(ROOT)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    print("installing the peers (bench/requirements-peers.txt) and the project ...", flush=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS), "-e", str(ROOT)], check=True)
    stamp.write_text(_fingerprint())
    return python


# ---------------------------------------------------------------------- running cases


def _last_exception(output: str) -> str:
    """The last ``SomeError: message`` line of a traceback (else the last line)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        name = line.split(":", 1)[0]
        if (
            ":" in line
            and name.replace(".", "").replace("_", "").isalnum()
            and (name.endswith(("Error", "Exception", "Exit", "Interrupt", "Failure")))
        ):
            return line
    return lines[-1] if lines else "no output"


def run_process(command: list[str], timeout: float, log: Path) -> dict[str, Any]:
    """Run one benchmark process; return its JSON line, or an ``error`` entry.

    A failed process's whole output is kept in ``log``; the entry quotes its last lines.
    """
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {shlex.join(command)}\n\n{done.stdout}\n{done.stderr}")
        return {
            "error": f"exit {done.returncode}: {_last_exception(done.stderr or done.stdout)}",
            "log": str(log.relative_to(ROOT)),
        }
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_seconds"] = wall
    return result


def case_command(python: Path, system: str, case: Case, args: argparse.Namespace) -> list[str]:
    common = ["--workdir", str(RESULTS / "work"), "--pg-dsn", args.pg_dsn]
    if case.workload == "service":
        n = case.n if system == "lexigram" else service_dbos_n(case.n)
        workers = ",".join(str(w) for w in SERVICE_WORKERS)
        return [
            str(python),
            "-m",
            "bench.systems.service_bench",
            *("--system", system, "--store", case.store, "--workers", workers),
            *("--n", str(n), "--latency-n", str(args.service_latency_n)),
            *("--idle-seconds", str(args.service_idle_seconds)),
            *("--timeout", str(args.timeout / 4)),
            *("--journal-mode", args.journal_mode, "--synchronous", args.synchronous),
            *common,
        ]
    if case.workload == "waits":
        plan = waits_plan(args, system)
        return [
            str(python),
            "-m",
            "bench.systems.waits_bench",
            *("--system", system, "--store", case.store),
            *("--n", str(plan["n"]), "--signal-n", str(plan["signal_n"])),
            *("--latency-n", str(plan["latency_n"]), "--timer-n", str(plan["timer_n"])),
            *("--concurrency", str(case.inflight), "--timeout", str(args.timeout / 3)),
            *("--journal-mode", args.journal_mode, "--synchronous", args.synchronous),
            *common,
        ]
    if case.workload in ("otel", "otel-instructions"):
        command = [str(python), "-m", "bench.systems.otel_bench"]
        if case.workload == "otel-instructions":
            return [*command, "--instructions"]
        return [
            *command,
            *("--inflight", str(case.inflight), "--batches", str(args.otel_batches)),
            *("--seconds", str(args.seconds), "--workdir", str(RESULTS / "work")),
            *("--journal-mode", args.journal_mode, "--synchronous", args.synchronous),
        ]
    if case.workload == "recovery":
        return [
            str(python),
            "-m",
            "bench.systems.lexigram_recovery",
            "--store",
            case.store,
            "--n",
            str(case.n),
            *common,
        ]
    return [
        str(python),
        "-m",
        MODULES[system],
        "--workload",
        case.workload,
        "--store",
        case.store,
        "--inflight",
        str(case.inflight),
        "--n",
        str(case.n),
        "--seconds",
        str(args.seconds),
        "--journal-mode",
        args.journal_mode,
        "--synchronous",
        args.synchronous,
        *common,
    ]


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + str(result["error"])[:300]
    if "unavailable" in result:
        return "not available: " + str(result["unavailable"])[:200]
    if result.get("workload") == "memory":
        traced, rss = result["bytes_per_saga"], result["rss_bytes_per_saga"]
        return f"{traced:,.0f} B/saga traced, {rss:,.0f} B RSS"
    if result.get("workload") == "service":
        idle = result.get("idle_cpu_pct")
        idle_text = "" if idle is None else f", idle worker {idle:.2f} % CPU"
        wrong = f", {result['wrong']} WRONG" if result.get("wrong") else ""
        return (
            f"{result['sagas_per_s']:,.0f} sagas/s (enqueue {result['enqueue_per_s']:,.0f}/s), "
            f"pickup p50 {result['pickup_p50_ms']:.1f} ms p99 {result['pickup_p99_ms']:.1f} ms"
            f"{idle_text}{wrong}"
        )
    if result.get("workload") == "waits":
        wrong = f", {result['wrong']} WRONG" if result.get("wrong") else ""
        return (
            f"{result['parked']:,} parked ({result['parked_per_s']:,.0f}/s): worker RSS "
            f"{result['rss_tenth_to_all_bytes_per_saga']:,.0f} B/saga, store "
            f"{result['store_bytes_per_saga']:,.0f} B/saga; signalled "
            f"{result['sagas_per_s']:,.0f} sagas/s, resume p50 {result['resume_p50_ms']:.1f} ms "
            f"p99 {result['resume_p99_ms']:.1f} ms{wrong}"
        )
    if result.get("workload") == "otel":
        return (
            f"not instrumented {result['off_sagas_per_s']:,.0f}, SDK "
            f"{result['sdk_sagas_per_s']:,.0f}, no-op {result['noop_sagas_per_s']:,.0f} "
            f"sagas/s; SDK ÷ off {result['sdk_ratio']:.3f}, no-op ÷ off "
            f"{result['noop_ratio']:.3f}"
        )
    if result.get("workload") == "otel-instructions":
        off = result["off_instructions_per_saga"]
        return (
            f"instructions per saga: not instrumented {off:,.0f}, SDK "
            f"+{result['sdk_instructions_per_saga'] - off:,.0f}, no-op "
            f"+{result['noop_instructions_per_saga'] - off:,.0f}; one hooks test "
            f"{result['check_instructions']:.0f}"
        )
    if result.get("workload") == "recovery":
        return (
            f"fresh {result['fresh_seconds']:.2f}s, recovery {result['recovery_seconds']:.2f}s, "
            f"ran twice {result['ran_twice']}"
        )
    wrong = f", {result['wrong']} WRONG" if result.get("wrong") else ""
    return f"{result['sagas_per_s']:,.0f} sagas/s ({result['us_per_saga']:,.1f} us/saga){wrong}"


def expand(case: Case, result: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(case key, in flight, result) for each case a process measured.

    A service process measures every worker count: each becomes a case of its own, with the
    process's shared fields. A failed one fails every worker count.
    """
    if case.workload != "service":
        return [(case.key, case.inflight, result)]
    if "by_workers" not in result:
        return [(f"service/{case.store}/{w}", w, dict(result)) for w in SERVICE_WORKERS]
    shared = {k: v for k, v in result.items() if k != "by_workers"}
    return [
        (
            f"service/{case.store}/{part['workers']}",
            part["workers"],
            {**shared, **part, "wrong": part["latency_wrong"] + part["throughput_wrong"]},
        )
        for part in result["by_workers"]
    ]


def run_rounds(python: Path, cases: list[Case], args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        print(f"--- round {round_no + 1}/{args.rounds}", flush=True)
        for case in cases:
            if case.workload == "waits" and round_no >= args.waits_rounds:
                continue
            if case.workload in FIRST_ROUND_ONLY and round_no > 0:
                continue
            shift = round_no % len(case.systems)
            order = case.systems[shift:] + case.systems[:shift]
            for system in order:
                log = RESULTS / "errors" / f"{case.key.replace('/', '-')}-{system}-{round_no}.log"
                found = run_process(case_command(python, system, case, args), args.timeout, log)
                for key, inflight, result in expand(case, found):
                    result.update(
                        round=round_no,
                        case=key,
                        system=system,
                        workload=case.workload,
                        store=case.store,
                        inflight=inflight,
                    )
                    results.append(result)
                    print(f"  {key:<22} {system:<12} {summary(result)}", flush=True)
    return results


# ---------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run (a few minutes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=None, help="length of one timed batch")
    parser.add_argument("--recovery-n", type=int, default=None)
    parser.add_argument("--memory-n", type=int, default=None)
    parser.add_argument("--service-n", type=int, default=None, help="sagas per service run")
    parser.add_argument("--service-latency-n", type=int, default=None)
    parser.add_argument("--service-idle-seconds", type=float, default=None)
    parser.add_argument("--waits-n", type=int, default=None, help="lexigram's parked sagas")
    parser.add_argument("--waits-dbos-n", type=int, default=None, help="DBOS's waiting ones")
    parser.add_argument("--waits-signal-n", type=int, default=None, help="lexigram's signalled")
    parser.add_argument("--waits-latency-n", type=int, default=None)
    parser.add_argument("--waits-timer-n", type=int, default=None)
    parser.add_argument("--waits-rounds", type=int, default=1, help="rounds with waits cases")
    parser.add_argument("--otel-batches", type=int, default=None, help="cycles per otel case")
    parser.add_argument("--only", default="", help="comma-separated words matched in case keys")
    parser.add_argument("--systems", default="", help="comma-separated systems to run")
    parser.add_argument("--journal-mode", default="WAL", help="SQLite journal_mode (both)")
    parser.add_argument("--synchronous", default="FULL", help="SQLite synchronous (both)")
    parser.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN))
    parser.add_argument("--timeout", type=float, default=900.0, help="per process, seconds")
    parser.add_argument("--profile", action="store_true", help="also profile lexigram")
    parser.add_argument("--profile-only", action="store_true", help="only profile lexigram")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/")
    parser.add_argument("--skip-install", action="store_true", help="reuse the peers' venv as is")
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 0.4 if args.quick else 1.0
    if args.recovery_n is None:
        args.recovery_n = 2_000 if args.quick else 10_000
    if args.memory_n is None:
        args.memory_n = 2_000 if args.quick else 10_000
    if args.service_n is None:
        args.service_n = 600 if args.quick else 1_500
    if args.service_latency_n is None:
        args.service_latency_n = 50 if args.quick else 150
    if args.service_idle_seconds is None:
        args.service_idle_seconds = 3.0 if args.quick else 6.0
    if args.waits_n is None:
        args.waits_n = 10_000 if args.quick else 100_000
    if args.waits_dbos_n is None:
        args.waits_dbos_n = 600 if args.quick else 2_000
    if args.waits_signal_n is None:
        args.waits_signal_n = 2_000 if args.quick else min(10_000, args.waits_n // 2)
    if args.waits_latency_n is None:
        args.waits_latency_n = 50 if args.quick else 150
    if args.waits_timer_n is None:
        args.waits_timer_n = 1_000 if args.quick else 5_000
    if args.otel_batches is None:
        args.otel_batches = 5 if args.quick else 9
    return args


def select(cases: list[Case], args: argparse.Namespace) -> list[Case]:
    words = [w for w in args.only.split(",") if w]
    systems = {s for s in args.systems.split(",") if s}
    chosen = []
    for case in cases:
        if words and not any(word in case.key for word in words):
            continue
        names = tuple(s for s in case.systems if not systems or s in systems)
        if names:
            chosen.append(Case(case.workload, case.store, case.inflight, names, case.n))
    return chosen


def main() -> None:
    args = parse_args()
    started = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for old_log in (RESULTS / "errors").glob("*.log"):
        old_log.unlink()
    python = ensure_peers_venv(skip_install=args.skip_install)
    machine_run = subprocess.run(
        [str(python), "-m", "bench.machine", "--pg-dsn", args.pg_dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    machine = json.loads(machine_run.stdout)
    print(
        f"machine: {machine['nproc']} cores, Python {machine['python']}, "
        f"SQLite {machine['sqlite']}, PostgreSQL "
        f"{machine['postgres'].get('server_version') or 'not reachable'}",
        flush=True,
    )
    cases = select(
        build_cases(
            quick=args.quick,
            memory_n=args.memory_n,
            recovery_n=args.recovery_n,
            service_n=args.service_n,
            waits_n=args.waits_n,
        ),
        args,
    )
    skipped: list[dict[str, str]] = []
    if not machine["postgres"]["available"]:
        reason = machine["postgres"]["reason"]
        skipped += [
            {"case": c.key, "reason": f"PostgreSQL not reachable ({reason})"}
            for c in cases
            if c.store == "postgres"
        ]
        cases = [c for c in cases if c.store != "postgres"]
        print(f"PostgreSQL cases skipped: {reason}", flush=True)

    results = [] if args.profile_only else run_rounds(python, cases, args)
    profile: dict[str, Any] | None = None
    if args.profile or args.profile_only:
        print("--- profiling lexigram", flush=True)
        done = subprocess.run(
            [str(python), "-m", "bench.profiling", "--out", str(RESULTS)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            profile = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            print("profiling failed:", done.stderr[-2000:], flush=True)
    command_args = shlex.join(sys.argv[1:])
    report = {
        "machine": machine,
        "command": "make bench" + (f' BENCH_ARGS="{command_args}"' if command_args else ""),
        "direct_command": f".venv/bin/python bench/run.py {command_args}".strip(),
        "options": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "quick": args.quick,
            "journal_mode": args.journal_mode,
            "synchronous": args.synchronous,
            "recovery_n": args.recovery_n,
            "memory_n": args.memory_n,
            "service_n": args.service_n,
            "service_dbos_n": service_dbos_n(args.service_n),
            "service_latency_n": args.service_latency_n,
            "service_idle_seconds": args.service_idle_seconds,
            "waits_rounds": min(args.waits_rounds, args.rounds),
            "waits_concurrency": WAITS_CONCURRENCY,
            "waits": {system: waits_plan(args, system) for system in ("lexigram", "dbos")},
            "otel_batches": args.otel_batches,
        },
        "results": results,
        "skipped": skipped,
        "profile": profile,
        "duration_seconds": time.time() - started,
        "load_average_at_end": os.getloadavg()[0],
    }
    # A partial run (--only, --systems, --profile-only) never replaces the last full results
    # nor the docs made from them.
    partial = bool(args.only or args.systems or args.profile_only)
    latest = RESULTS / ("latest-partial.json" if partial else "latest.json")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (RESULTS / f"results-{stamp}.json", latest):
        path.write_text(json.dumps(report, indent=1, sort_keys=True))
    report_cmd = [str(python), "-m", "bench.report", str(latest)]
    if not (args.no_docs or partial):
        report_cmd += ["--docs", str(DOCS), "--png", str(PLOT)]
    subprocess.run(report_cmd, cwd=ROOT, check=True)
    print(
        f"done in {report['duration_seconds'] / 60:.1f} min; raw results in "
        f"{latest.relative_to(ROOT)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
