"""Sagas as a service: enqueued by one process, run by 1, 2, 4 worker processes.

``python -m bench.systems.service_bench --system lexigram --store postgres`` prints one
JSON line with a result per worker count (``by_workers``). Every role is a process of its
own (``_service_roles``; the system's module is ``bench.systems.service_<system>``), all on
one store (one SQLite file, or one PostgreSQL database):

1. **prepare**: one process creates the schema (and DBOS's queue).
2. **enqueuer**: one process, started once, that enqueues when told to (its start-up is
   not timed).
3. For each worker count of ``--workers`` (``1,2,4``), in turn: start workers until there
   are that many (lexigram: ``serve(concurrency=C)``; DBOS: a queue with
   ``worker_concurrency=C``), let them settle for :data:`SETTLE_SECONDS`, then

   - **idle** (the first count only, with ``--idle-seconds``): the CPU time every worker
     process used while nothing was enqueued (``time.process_time()`` in the worker, asked
     for at both ends: every thread, nanoseconds), as a share of one core;
   - **latency**: the enqueuer enqueues ``--latency-n`` sagas, one every ``--interval``
     seconds on a fixed schedule, so the workers are idle when each arrives. *Pickup
     latency*: from the return of the enqueue call (the saga is committed) to the start
     of step 1's body, both ``time.time()`` on one machine. The first
     :data:`LATENCY_WARMUP` sagas are left out;
   - **throughput**: the enqueuer enqueues ``--n`` sagas from ``--tasks`` coroutines as
     fast as it can while the workers run them. *Throughput*: ``n`` over the time from
     the first enqueue call to the end of the last saga's step 3. Reported beside it: the
     enqueue rate alone (how fast the enqueuer went) and the sagas each worker ran.

4. SIGTERM to every worker (their graceful stop); the store is removed (SQLite) or left for
   the next run to recreate (PostgreSQL).

The store keeps the sagas of the earlier phases (claims must not slow down with finished
sagas). A saga counts as wrong when it did not end ``COMPLETED`` (DBOS: ``SUCCESS``) or did
not record its step times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from bench.systems._common import (
    DEFAULT_PG_DSN,
    emit,
    postgres_version,
    recreate_database,
    remove_sqlite,
)

SYSTEMS = ("lexigram", "dbos")
PG_DATABASES = {"lexigram": "lexigram_service", "dbos": "dbos_service"}
LATENCY_WARMUP = 5
SETTLE_SECONDS = 2.0
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


# ---------------------------------------------------------------------- child processes


class Child:
    """A role process; its standard output read line by line by a thread of its own."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._stderr = log.open("w")
        # Standard input stays open while this process lives: a worker stops at its end.
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,))
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, word: str, timeout: float) -> None:
        """Wait for the line ``word``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no {word!r} in {timeout:.0f}s{self.tail()}") from None
        if line != word:
            raise RuntimeError(f"{self.name} said {line!r}, expected {word!r}{self.tail()}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def next_json(self, timeout: float) -> dict[str, Any]:
        """Wait for the next JSON line the process prints."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no result in {timeout:.0f}s") from None
            if line is None:
                raise RuntimeError(f"{self.name} ended{self.tail()}")
            if line.startswith("{"):
                found: dict[str, Any] = json.loads(line)
                return found

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to end; return its JSON line."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name}: still running after {timeout:.0f}s") from None
        self._reader.join()
        lines = []
        while (line := self.lines.get()) is not None:
            lines.append(line)
        found = [line for line in lines if line.startswith("{")]
        if code != 0 or not found:
            raise RuntimeError(f"{self.name}: exit {code}{self.tail()}")
        result: dict[str, Any] = json.loads(found[-1])
        return result

    def tail(self) -> str:
        self._stderr.flush()
        text = self.log.read_text(errors="replace").strip()
        return f"\n--- {self.name} stderr (last lines) ---\n{text[-3000:]}" if text else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def close(self, *, keep_log: bool) -> None:
        """End the process if it still runs; keep its standard error only if asked."""
        self.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._reader.join(timeout=5)
        self._stderr.close()
        if not keep_log:
            self.log.unlink(missing_ok=True)


# ---------------------------------------------------------------------- statistics


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile, interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    fields = report["fields"]
    return [dict(zip(fields, saga, strict=True)) for saga in report["sagas"]]


def _complete(row: dict[str, Any]) -> bool:
    return bool(row["ok"]) and row["t_pickup"] is not None and row["t_done"] is not None


def latency_fields(report: dict[str, Any], workers: int) -> dict[str, Any]:
    rows = _rows(report)
    done = [r for r in rows[LATENCY_WARMUP:] if _complete(r)]
    pickup = [(r["t_pickup"] - r["t_after"]) * 1000 for r in done]
    from_call = [(r["t_pickup"] - r["t_before"]) * 1000 for r in done]
    enqueue = [(r["t_after"] - r["t_before"]) * 1000 for r in rows]
    return {
        "latency_n": len(done),
        "pickup_p50_ms": percentile(pickup, 50),
        "pickup_p99_ms": percentile(pickup, 99),
        "pickup_max_ms": max(pickup, default=float("nan")),
        "pickup_from_call_p50_ms": percentile(from_call, 50),
        "enqueue_call_p50_ms": percentile(enqueue, 50),
        "latency_per_worker": [sum(1 for r in done if r["worker"] == k) for k in range(workers)],
        "latency_wrong": sum(1 for r in rows if not _complete(r)),
    }


def throughput_fields(report: dict[str, Any], workers: int) -> dict[str, Any]:
    rows = _rows(report)
    done = [r for r in rows if _complete(r)]
    first = min(r["t_before"] for r in rows)
    enqueued = max(r["t_after"] for r in rows)
    last = max((r["t_done"] for r in done), default=enqueued)
    per_worker = [sum(1 for r in done if r["worker"] == k) for k in range(workers)]
    loaded = [(r["t_pickup"] - r["t_after"]) * 1000 for r in done]
    return {
        "n": len(rows),
        "seconds": last - first,
        "sagas_per_s": len(rows) / (last - first),
        "steps_per_s": 3 * len(rows) / (last - first),
        "enqueue_per_s": len(rows) / (enqueued - first),
        "per_worker": per_worker,
        "loaded_pickup_p50_ms": percentile(loaded, 50),
        "throughput_wrong": len(rows) - len(done),
    }


# ---------------------------------------------------------------------- the run


def _role_command(args: argparse.Namespace, role: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        f"bench.systems.service_{args.system}",
        "--role",
        role,
        "--store",
        args.store,
        "--location",
        args.location,
        "--concurrency",
        str(args.concurrency),
        "--journal-mode",
        args.journal_mode,
        "--synchronous",
        args.synchronous,
        *extra,
    ]


async def _prepare_store(args: argparse.Namespace) -> dict[str, Any]:
    if args.store == "postgres":
        args.location = await recreate_database(args.pg_dsn, PG_DATABASES[args.system])
        return {"postgres": {"server_version": await postgres_version(args.location)}}
    path = args.workdir / f"service-{args.system}-{os.getpid()}.sqlite"
    remove_sqlite(path)
    if args.system == "dbos":  # DBOS leaves journal_mode alone: WAL persists in the file
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA journal_mode={args.journal_mode}")
        conn.close()
    args.location = str(path)
    return {}


def _child(args: argparse.Namespace, name: str, role: str, *extra: str) -> Child:
    log = args.workdir / f"service-{args.system}-{name.replace(' ', '-')}-{os.getpid()}.log"
    return Child(name, _role_command(args, role, *extra), log)


def _idle(workers: list[Child], seconds: float) -> dict[str, Any]:
    """Each worker's CPU time over ``seconds`` with nothing to do, as a share of one core."""

    def cpu() -> list[float]:
        for worker in workers:
            worker.send("cpu")
        return [float(w.next_json(READY_TIMEOUT)["cpu_seconds"]) for w in workers]

    before = cpu()
    start = time.monotonic()
    time.sleep(seconds)
    after = cpu()
    elapsed = time.monotonic() - start
    shares = [100 * (a - b) / elapsed for a, b in zip(after, before, strict=True)]
    return {
        "idle_seconds": elapsed,
        "idle_cpu_pct": sum(shares) / len(shares),
        "idle_cpu_pct_all": shares,
    }


class Phases:
    """Wall time of each phase of the run (start-up included), to see where it goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self._mark
        self._mark = now


def _start_workers(args: argparse.Namespace, workers: list[Child], count: int) -> None:
    """Start workers until there are ``count``; wait until they serve."""
    new = [
        _child(args, f"worker {k}", "worker", "--index", str(k)) for k in range(len(workers), count)
    ]
    workers += new
    for worker in new:
        worker.expect("ready", READY_TIMEOUT)


def _measure(
    args: argparse.Namespace, enqueuer: Child, workers: list[Child], phases: Phases
) -> dict[str, Any]:
    """The latency phase, then the throughput phase, with the workers running now."""
    count = len(workers)
    enqueuer.send(f"steady {args.latency_n + LATENCY_WARMUP} lat{count}")
    fields = latency_fields(enqueuer.next_json(args.timeout), count)
    phases.done(f"latency, {count} workers")
    enqueuer.send(f"flood {args.n} thr{count}")
    fields.update(throughput_fields(enqueuer.next_json(args.timeout), count))
    phases.done(f"throughput, {count} workers")
    dead = [w.name for w in workers if not w.alive()]
    if dead:
        raise RuntimeError(f"{', '.join(dead)} ended during the run{workers[0].tail()}")
    return {"workers": count, **fields}


def run(args: argparse.Namespace) -> dict[str, Any]:
    phases = Phases()
    info = asyncio.run(_prepare_store(args))
    prep = _child(args, "prepare", "prepare")
    try:
        info.update(prep.result(READY_TIMEOUT)["info"])
    finally:
        prep.close(keep_log=False)  # its end is in the exception's message
    phases.done("prepare")

    workers: list[Child] = []
    enqueuer = _child(
        args,
        "enqueuer",
        "enqueue",
        *("--interval", str(args.interval), "--tasks", str(args.tasks)),
        *("--timeout", str(args.timeout)),
    )
    by_workers: list[dict[str, Any]] = []
    succeeded = False
    try:
        enqueuer.expect("ready", READY_TIMEOUT)
        for count in args.workers:
            _start_workers(args, workers, count)
            time.sleep(SETTLE_SECONDS)
            phases.done(f"start, {count} workers")
            idle = {}
            if args.idle_seconds > 0 and not by_workers:
                idle = _idle(workers, args.idle_seconds)
                phases.done(f"idle, {count} workers")
            by_workers.append({**_measure(args, enqueuer, workers, phases), **idle})
        enqueuer.send("quit")
        info.update(enqueuer.result(STOP_TIMEOUT)["info"])
        for worker in workers:
            worker.proc.send_signal(signal.SIGTERM)
        stopped = [w.result(STOP_TIMEOUT) for w in workers]
        phases.done("stop")
        succeeded = True
    finally:
        for child in [*workers, enqueuer]:  # logs stay in the work directory after a failure
            child.close(keep_log=not succeeded)
        if args.store == "sqlite":
            remove_sqlite(Path(args.location))
    return {
        "system": args.system,
        "workload": "service",
        "store": args.store,
        "inflight": max(args.workers),
        "concurrency": args.concurrency,
        "info": info,
        "by_workers": by_workers,
        "wrong": sum(r["latency_wrong"] + r["throughput_wrong"] for r in by_workers),
        "worker_cpu_seconds": [s["cpu_seconds"] for s in stopped],
        "phase_seconds": phases.seconds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.systems.service_bench")
    parser.add_argument("--system", choices=SYSTEMS, required=True)
    parser.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, in turn")
    parser.add_argument("--concurrency", type=int, default=64, help="sagas per worker")
    parser.add_argument("--n", type=int, default=2000, help="sagas of the throughput phase")
    parser.add_argument("--tasks", type=int, default=16, help="enqueueing coroutines")
    parser.add_argument("--latency-n", type=int, default=200, help="sagas of the latency phase")
    parser.add_argument("--interval", type=float, default=0.02, help="latency phase, seconds")
    parser.add_argument("--idle-seconds", type=float, default=0.0, help="0: not measured")
    parser.add_argument("--timeout", type=float, default=600.0, help="per phase, seconds")
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/work"))
    parser.add_argument("--journal-mode", default="WAL")
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN))
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.location = ""
    args.workers = sorted(int(w) for w in args.workers.split(","))
    if not args.workers or args.workers[0] < 1:
        parser.error("--workers needs counts >= 1")
    return args


def main() -> None:
    emit(run(parse_args()))


if __name__ == "__main__":
    main()
