"""What every system's benchmark process shares: options, the driver, memory, JSON output.

A system module implements :class:`Bench` (set up, run one saga, start one suspended
saga, wait for the suspended ones, tear down) and calls :func:`main`. The driver is the
same for every system, so the loop around the sagas costs each of them the same:

- ``run`` / ``compensate``: ``inflight`` worker coroutines take saga numbers from one
  shared counter until ``n`` sagas ran; ``inflight=1`` is the sequential case (one
  ``await`` after the other). The time is wall time around the whole batch.
- ``n=0`` (the default) picks ``n`` so the batch lasts about ``seconds``: batches of
  doubling size are run first as a warm-up until one lasts a tenth of that.
- ``memory``: start ``n`` sagas whose first step awaits one ``asyncio.Event`` (so they are
  all suspended, in flight), then report the growth of ``tracemalloc``'s traced memory
  and, in a separate phase without tracing, of the resident set size, divided by ``n``.

The process prints exactly one JSON object on its last line of standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import tracemalloc
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
WORKLOADS = ("run", "compensate", "memory")
STEPS_PER_SAGA = 3


@dataclass(frozen=True, slots=True)
class Options:
    """One benchmark process's settings (the command line)."""

    system: str
    workload: str
    store: str
    inflight: int
    n: int
    seconds: float
    max_n: int
    workdir: Path
    journal_mode: str
    synchronous: str
    pg_dsn: str


class Gate:
    """The event suspended sagas wait on, and how many reached it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.suspended = 0

    async def enter(self) -> None:
        """Count this saga as suspended, then wait until the gate opens."""
        self.suspended += 1
        await self.event.wait()


GATE: Gate | None = None
"""Set by the memory workload before it starts suspended sagas."""


def gate() -> Gate:
    """The current gate (the ``suspend`` variant of each saga awaits it in its step 1)."""
    if GATE is None:
        raise RuntimeError("no gate: only the memory workload starts suspended sagas")
    return GATE


class Bench(Protocol):
    """What a system module provides to the shared driver."""

    async def setup(self, options: Options) -> dict[str, Any]:
        """Prepare the system and its store; return facts to report (versions, pragmas)."""
        ...

    async def run_one(self, i: int) -> bool:
        """Run saga number ``i`` to its end; return whether it ended as the workload expects."""
        ...

    async def start_suspended(self, i: int) -> None:
        """Start saga ``i`` of the suspending variant in the background and return."""
        ...

    async def finish_suspended(self) -> int:
        """Wait for every suspended saga to end (the gate is open); return how many ended."""
        ...

    async def teardown(self) -> None:
        """Release everything ``setup`` opened."""
        ...


# ---------------------------------------------------------------------- options


def parse_options(system: str, stores: tuple[str, ...], argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog=f"python -m bench.systems.{system}_bench")
    parser.add_argument("--workload", choices=WORKLOADS, default="run")
    parser.add_argument("--store", choices=stores, default=stores[0])
    parser.add_argument("--inflight", type=int, default=1, help="sagas in flight (1: sequential)")
    parser.add_argument("--n", type=int, default=0, help="sagas to time (0: adaptive)")
    parser.add_argument("--seconds", type=float, default=1.0, help="adaptive batch length")
    parser.add_argument("--max-n", type=int, default=2_000_000, help="adaptive upper bound")
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/work"))
    parser.add_argument("--journal-mode", default="WAL", help="SQLite journal_mode for both")
    parser.add_argument("--synchronous", default="FULL", help="SQLite synchronous for both")
    parser.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN))
    ns = parser.parse_args(argv)
    if ns.inflight < 1:
        parser.error("--inflight must be >= 1")
    ns.workdir.mkdir(parents=True, exist_ok=True)
    return Options(
        system=system,
        workload=ns.workload,
        store=ns.store,
        inflight=ns.inflight,
        n=ns.n,
        seconds=ns.seconds,
        max_n=ns.max_n,
        workdir=ns.workdir.resolve(),
        journal_mode=ns.journal_mode.upper(),
        synchronous=ns.synchronous.upper(),
        pg_dsn=ns.pg_dsn,
    )


# ---------------------------------------------------------------------- stores


def fresh_sqlite_path(options: Options, name: str) -> Path:
    """A database path in the work directory, with no file (nor WAL) left from a run."""
    path = options.workdir / f"{name}-{os.getpid()}.sqlite"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def dsn_for_database(dsn: str, database: str) -> str:
    """``dsn`` with its database name replaced."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


async def recreate_database(dsn: str, database: str) -> str:
    """Drop and create ``database`` on the server of ``dsn``; return a DSN pointing at it."""
    import asyncpg  # the peers' virtualenv has it; imported here so memory runs need none

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return dsn_for_database(dsn, database)


async def postgres_version(dsn: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# ---------------------------------------------------------------------- driver


async def drive(
    run_one: Callable[[int], Awaitable[bool]], n: int, inflight: int
) -> tuple[float, int]:
    """Run ``n`` sagas with ``inflight`` workers; return (seconds, sagas with a wrong outcome)."""
    next_i = 0
    wrong = 0

    async def worker() -> None:
        nonlocal next_i, wrong
        while next_i < n:
            i = next_i
            next_i += 1
            if not await run_one(i):
                wrong += 1

    start = time.perf_counter()
    if inflight == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.perf_counter() - start, wrong


async def timed_batch(bench: Bench, options: Options) -> dict[str, Any]:
    """Warm up, choose ``n`` (unless given), time one batch; return the throughput fields."""
    run_one = bench.run_one
    warm = max(8, 4 * options.inflight)
    warm_total = 0
    wrong_total = 0
    per_saga = 0.0
    while True:
        elapsed, wrong = await drive(run_one, warm, options.inflight)
        warm_total += warm
        wrong_total += wrong
        per_saga = elapsed / warm
        if elapsed >= options.seconds / 10 or warm_total >= options.max_n:
            break
        warm *= 2
    n = options.n
    if n <= 0:
        n = int(options.seconds / max(per_saga, 1e-9))
        n = max(10 * options.inflight, 20, min(n, options.max_n))
    gc.collect()
    elapsed, wrong = await drive(run_one, n, options.inflight)
    rate = n / elapsed
    return {
        "n": n,
        "seconds": elapsed,
        "sagas_per_s": rate,
        "us_per_saga": 1e6 / rate,
        "steps_per_s": rate * STEPS_PER_SAGA,
        "wrong": wrong + wrong_total,
        "warmup_sagas": warm_total,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


async def _suspend_all(
    bench: Bench, n: int, measure: Callable[[], int], *, sites: list[dict[str, Any]] | None = None
) -> tuple[int, int]:
    """Start ``n`` suspended sagas; return (measure() growth, sagas that ended afterwards).

    With ``sites`` (tracemalloc running), also list where the growth was allocated.
    """
    global GATE
    GATE = gate_now = Gate()
    gc.collect()
    first_snapshot = tracemalloc.take_snapshot() if sites is not None else None
    before = measure()
    chunk = 500
    for first in range(0, n, chunk):
        await asyncio.gather(
            *(bench.start_suspended(i) for i in range(first, min(first + chunk, n)))
        )
    deadline = time.monotonic() + 600
    while gate_now.suspended < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {gate_now.suspended} of {n} sagas reached the gate")
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # let the last starts settle (their writes return)
    gc.collect()
    grown = measure() - before
    if first_snapshot is not None and sites is not None:
        sites += _allocation_sites(first_snapshot, tracemalloc.take_snapshot(), n)
    gate_now.event.set()
    ended = await bench.finish_suspended()
    GATE = None
    return grown, ended


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3.", "/bench/"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            if marker == "/bench/":
                return f"bench/{tail}"
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return filename


def _allocation_sites(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int
) -> list[dict[str, Any]]:
    """The source lines whose allocations grew most, per suspended saga."""
    ignore = [tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
    diffs = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    return [
        {
            "site": f"{_short(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
            "bytes_per_saga": stat.size_diff / n,
            "blocks_per_saga": stat.count_diff / n,
        }
        for stat in diffs[:15]
        if stat.size_diff > 0
    ]


async def memory_per_saga(bench: Bench, options: Options) -> dict[str, Any]:
    """Memory of ``n`` suspended in-flight sagas, per saga (tracemalloc, then RSS)."""
    n = options.n if options.n > 0 else 10_000
    await drive(bench.run_one, 200, 10)  # warm caches, interned strings, freelists
    rss_growth, ended_rss = await _suspend_all(bench, n, _rss_bytes)
    sites: list[dict[str, Any]] = []
    tracemalloc.start()
    try:
        traced_growth, ended_traced = await _suspend_all(
            bench, n, lambda: tracemalloc.get_traced_memory()[0], sites=sites
        )
    finally:
        tracemalloc.stop()
    return {
        "n": n,
        "bytes_per_saga": traced_growth / n,
        "rss_bytes_per_saga": rss_growth / n,
        "top_allocations": sites,
        "wrong": (n - ended_rss) + (n - ended_traced),
    }


# ---------------------------------------------------------------------- entry point


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


async def _main(bench: Bench, options: Options) -> dict[str, Any]:
    info = await bench.setup(options)
    try:
        if options.workload == "memory":
            fields = await memory_per_saga(bench, options)
        else:
            fields = await timed_batch(bench, options)
    finally:
        await bench.teardown()
    return {
        "system": options.system,
        "workload": options.workload,
        "store": options.store,
        "inflight": options.inflight,
        "info": info,
        **fields,
    }


def main(factory: Callable[[Options], Bench], system: str, stores: tuple[str, ...]) -> None:
    """Parse the command line, run the workload, print its JSON line."""
    options = parse_options(system, stores)
    bench = factory(options)
    emit(asyncio.run(_main(bench, options)))
