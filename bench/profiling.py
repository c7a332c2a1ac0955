"""Profile lexigram's own paths while the benchmark workloads run.

``python -m bench.profiling --out bench/results`` (peers' virtualenv; ``bench/run.py
--profile`` calls it) samples these workloads of ``bench.systems.lexigram_bench`` with
py-spy (every thread, idle time included, 1 kHz) and, for the in-memory one, also with
pyinstrument (call tree of the main thread):

- in memory, sequential (``execute`` in a loop);
- SQLite (WAL, ``synchronous=FULL``), sequential and with 100 in flight;
- PostgreSQL with 64 in flight, when a server answers.

For each it writes ``profile-<name>.txt`` (per thread: the functions with the most self
time and with the most time including callees, as a share of that thread's samples) and
prints one JSON line summarising the hottest functions, which ``bench/report.py`` puts in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.systems._common import DEFAULT_PG_DSN

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_IDLE_LEAVES = ("EpollSelector.select", "select (selectors", "Condition.wait", "Queue.get")


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    title: str
    args: tuple[str, ...]


TARGETS = (
    Target(
        "memory-sequential",
        "In memory, sequential (`execute` in a loop)",
        ("--store", "memory", "--inflight", "1", "--n", "40000"),
    ),
    Target(
        "sqlite-sequential",
        "SQLite (WAL, synchronous=FULL), sequential",
        ("--store", "sqlite", "--inflight", "1", "--n", "3000"),
    ),
    Target(
        "sqlite-100",
        "SQLite (WAL, synchronous=FULL), 100 in flight",
        ("--store", "sqlite", "--inflight", "100", "--n", "20000"),
    ),
    Target(
        "postgres-64",
        "PostgreSQL, 64 in flight",
        ("--store", "postgres", "--inflight", "64", "--n", "6000"),
    ),
)


def _function_key(frame: str) -> str:
    """``Class.method (path:line)`` -> ``Class.method (path)``: one row per function."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({match['file']})"


def parse_raw(path: Path) -> dict[str, dict[str, Any]]:
    """Self and inclusive sample counts per function, per thread, from py-spy's raw output."""
    threads: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, _, frames_text = stack.partition(";")
        thread_name = head.split(": ", 1)[-1]
        frames = [_function_key(f) for f in frames_text.split(";")] if frames_text else []
        entry = threads.setdefault(
            thread_name,
            {"samples": 0, "self": collections.Counter(), "total": collections.Counter()},
        )
        entry["samples"] += count
        if not frames:
            entry["self"]["(no Python frame)"] += count
            continue
        leaf = frames[-1]
        if any(leaf.startswith(idle) for idle in _IDLE_LEAVES):
            leaf = f"[idle: waiting] {leaf}"
        entry["self"][leaf] += count
        for function in set(frames):
            entry["total"][function] += count
    return threads


def _rows(thread: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    samples = thread["samples"] or 1
    return [
        {
            "function": function,
            "self_pct": 100 * count / samples,
            "total_pct": 100 * thread["total"].get(function, count) / samples,
        }
        for function, count in thread["self"].most_common(limit)
    ]


def write_text(path: Path, title: str, threads: dict[str, dict[str, Any]]) -> None:
    lines = [f"# {title}", ""]
    for name, thread in sorted(threads.items(), key=lambda t: -t[1]["samples"]):
        samples = thread["samples"] or 1
        lines += [f"## thread {name}: {thread['samples']} samples", "", "self time:"]
        for function, count in thread["self"].most_common(40):
            lines.append(f"  {100 * count / samples:5.1f} %  {function}")
        lines += ["", "including callees:"]
        for function, count in thread["total"].most_common(60):
            lines.append(f"  {100 * count / samples:5.1f} %  {function}")
        lines.append("")
    path.write_text("\n".join(lines))


def _py_spy() -> str:
    found = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed in this virtualenv")
    return found


def profile_target(target: Target, out: Path, pg_dsn: str) -> dict[str, Any]:
    raw = out / f"profile-{target.name}.raw"
    workload = [
        sys.executable,
        "-m",
        "bench.systems.lexigram_bench",
        "--workload",
        "run",
        "--seconds",
        "0.3",
        "--pg-dsn",
        pg_dsn,
        "--workdir",
        str(out / "work"),
        *target.args,
    ]
    command = [_py_spy(), "record", "--format", "raw", "--rate", "1000", "--threads", "--idle"]
    done = subprocess.run(
        [*command, "-o", str(raw), "--", *workload], capture_output=True, text=True, check=False
    )
    last = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not last or "unavailable" in last[-1]:
        return {"name": target.name, "title": target.title, "error": (done.stderr or "")[-500:]}
    threads = parse_raw(raw)
    write_text(out / f"profile-{target.name}.txt", target.title, threads)
    raw.unlink(missing_ok=True)
    result = json.loads(last[-1])
    summary: dict[str, Any] = {
        "name": target.name,
        "title": f"{target.title}: {result['sagas_per_s']:,.0f} sagas/s while sampled",
        "threads": {},
    }
    for name, thread in sorted(threads.items(), key=lambda t: -t[1]["samples"]):
        summary["threads"][name] = {"samples": thread["samples"], "top": _rows(thread, 25)}
    main = threads.get("MainThread")
    summary["top"] = _rows(main, 25) if main else []
    return summary


def pyinstrument_tree(out: Path) -> None:
    """A pyinstrument call tree of the in-memory sequential path (main thread)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pyinstrument",
            "--renderer",
            "text",
            "--show-all",
            "--outfile",
            str(out / "profile-memory-sequential-pyinstrument.txt"),
            "-m",
            "bench.systems.lexigram_bench",
            "--workload",
            "run",
            "--store",
            "memory",
            "--n",
            "40000",
            "--seconds",
            "0.3",
        ],
        capture_output=True,
        check=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN))
    parser.add_argument("--only", default="", help="comma-separated target names")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = {w for w in args.only.split(",") if w}
    summaries = []
    for target in TARGETS:
        if wanted and target.name not in wanted:
            continue
        summary = profile_target(target, args.out, args.pg_dsn)
        summaries.append(summary)
        top = summary.get("top", [])[:3]
        print(
            f"{target.name}: " + ", ".join(f"{r['function']} {r['self_pct']:.1f}%" for r in top),
            file=sys.stderr,
        )
    pyinstrument_tree(args.out)
    print(json.dumps({"targets": summaries}))


if __name__ == "__main__":
    main()
