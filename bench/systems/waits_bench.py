"""Durable waits: sagas parked waiting for a signal, a worker serving them, a client signalling.

``python -m bench.systems.waits_bench --system lexigram --store postgres --n 100000`` prints
one JSON line. Two processes of the system's module (``bench.systems.waits_<system>``),
started by this one, share one store (one SQLite file, or one PostgreSQL database):

- the **worker** serves (lexigram: ``serve(concurrency=C)``; DBOS: a launched DBOS) and
  answers ``rss`` with its memory (:func:`rss`);
- the **client** sends the signals (lexigram: ``manager.signal``; DBOS:
  ``DBOSClient.send_async``) and reads back what the sagas recorded.

The saga: step 1 trivial, step 2 waits for the signal ``go`` and records ``t_resume``
(``time.time()`` when its body starts), step 3 records ``t_done``. DBOS: a workflow calling
a step, then ``DBOS.recv_async("go")``, then two steps recording the same times. Sagas are
started by :data:`PARKER`: lexigram's client enqueues them (``tasks`` coroutines) and the
worker claims and parks them; DBOS's worker starts its workflows, which wait in ``recv``.

The phases, in one set of processes on one store (which keeps what earlier phases left):

1. **warm-up**: ``warmup_n`` sagas parked, signalled and completed, so the worker ran
   its full concurrency before its memory is taken as the baseline;
2. **parking**: the worker's memory and the store's size, then ``n // 10`` sagas parked
   and both measured again, then the rest up to ``n`` and both again. The parking time
   runs from the first start to the moment the store (DBOS: the worker) counts all parked;
3. **timers** (``timer_n`` > 0): that many sagas parked on a one-hour timer (lexigram
   ``delay=``, DBOS ``DBOS.sleep_async``), and the worker's memory again. Before any
   saga ended, so that no memory freed by one is reused by another;
4. **latency**: ``latency_n`` parked sagas (after :data:`LATENCY_WARMUP` left out)
   signalled one every ``interval`` seconds on a fixed schedule, so the worker is idle
   when each arrives: from the return of the signal call (the signal is durable) to the
   start of step 2's body, both ``time.time()`` on one machine;
5. **throughput**: ``signal_n`` other parked sagas signalled from ``tasks`` coroutines as
   fast as the client can: sagas per second from the first signal call to the end of the
   last saga's step 3.

Store size: SQLite, the file plus its WAL after ``PRAGMA wal_checkpoint(TRUNCATE)``;
PostgreSQL, ``pg_total_relation_size`` summed over the system's tables (lexigram: the saga
table, its ``_signals`` and ``_meta`` tables; DBOS: every table of its ``dbos`` schema)
from a baseline taken after ``VACUUM FULL``: as written and, with all parked, after
another ``VACUUM FULL`` (the live rows, without the row versions updates left behind).

This module is also the role side: the system modules call :func:`role_main` with their
:class:`WaitsSystem`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from bench.systems._common import (
    DEFAULT_PG_DSN,
    postgres_version,
    recreate_database,
    remove_sqlite,
)
from bench.systems.service_bench import Child, Phases, percentile

SYSTEMS = ("lexigram", "dbos")
KINDS = ("signal", "timer")
PG_DATABASES = {"lexigram": "lexigram_waits", "dbos": "dbos_waits"}
PG_SCHEMAS = {"lexigram": "public", "dbos": "dbos"}
PARKER = {"lexigram": "client", "dbos": "worker"}
"""The process that starts the sagas that park: lexigram enqueues from the client (the
worker claims them), DBOS starts its workflows in the process that runs them."""

LATENCY_WARMUP = 5
WARMUP_ROUNDS = 5
"""The warm-up parks and completes this many times the worker's concurrency (at most a
tenth of ``n``): below that, the baseline missed memory that one full round of
concurrent sagas takes once (measured: 1,000 sagas for concurrency 200 gave a flat line,
100 did not)."""
SETTLE_SECONDS = 1.0
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
PARKED_POLL = 0.2
"""Seconds between two counts of the parked sagas while parking."""
COMPLETION_POLL = 0.05
TIMER_SECONDS = 3600.0
"""The timer the ``timer`` sagas park on (nothing fires during the run)."""
WAIT_SECONDS = 86400.0
"""The saga's deadline (lexigram) and the ``recv`` timeout (DBOS): far beyond the run."""


# ---------------------------------------------------------------------- the role side


class WaitsSystem(Protocol):
    """What a system module provides to the two roles."""

    async def open(self) -> dict[str, Any]:
        """Connect to the store (create the schema); return facts to report."""
        ...

    async def serve(self, stop: asyncio.Event) -> None:
        """Run as the worker until ``stop`` is set."""
        ...

    async def start(self, saga_id: str, kind: str) -> None:
        """Start one saga that will park (``kind``: ``signal`` or ``timer``)."""
        ...

    async def parked(self, saga_ids: list[str], kind: str) -> int:
        """How many of these sagas (started by this process) are parked now."""
        ...

    async def signal(self, saga_id: str) -> None:
        """Send ``go`` to the saga; return once the signal is durable."""
        ...

    async def ended(self, saga_id: str) -> bool:
        """Whether the saga reached a terminal state."""
        ...

    async def results(self, saga_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per saga id: ``ended``, ``ok`` (completed) and the times its steps recorded."""
        ...

    async def close(self) -> None:
        """Release everything ``open`` opened."""
        ...


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def rss() -> dict[str, int]:
    """This process's resident set size and its peak, in bytes; Python's live blocks.

    ``blocks`` (``sys.getallocatedblocks()``) counts the memory blocks Python's objects
    hold: anything a worker kept per saga would add at least one per saga, without the
    allocator's noise.

    After a collection and ``malloc_trim(0)``: memory the allocator kept after it was
    freed (by sagas that ran, in arenas of any thread) is handed back first, so what is
    left is what the process holds. Without it the figure moves by a megabyte or two
    between two looks, whatever happened in between.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measured as is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    found = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return {
        "rss_bytes": found["VmRSS"],
        "hwm_bytes": found["VmHWM"],
        "blocks": sys.getallocatedblocks(),
    }


def saga_ids(prefix: str, first: int, n: int) -> list[str]:
    """The ids of sagas ``first`` to ``first + n - 1`` of ``prefix`` (sorted as text too)."""
    return [f"{prefix}-{i:06d}" for i in range(first, first + n)]


async def fan_out(call: Callable[[str], Awaitable[None]], ids: list[str], tasks: int) -> None:
    """``call`` every id, from ``tasks`` coroutines taking the next id in turn."""
    next_i = 0

    async def one_task() -> None:
        nonlocal next_i
        while next_i < len(ids):
            i = next_i
            next_i += 1
            await call(ids[i])

    await asyncio.gather(*(one_task() for _ in range(tasks)))


async def _park(
    system: WaitsSystem, args: argparse.Namespace, ids: list[str], kind: str
) -> dict[str, Any]:
    """Start the sagas, wait until all are parked; return the times."""
    started = time.monotonic()
    await fan_out(lambda saga_id: system.start(saga_id, kind), ids, args.tasks)
    start_seconds = time.monotonic() - started
    deadline = started + args.timeout
    while (found := await system.parked(ids, kind)) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {found} of {len(ids)} sagas parked in {args.timeout:.0f}s")
        await asyncio.sleep(PARKED_POLL)
    return {
        "parked": len(ids),
        "start_seconds": start_seconds,
        "seconds": time.monotonic() - started,
    }


async def _wait_ended(
    system: WaitsSystem, ids: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Wait until every saga ended (the last signalled first); return their results."""
    deadline = time.monotonic() + timeout
    while not await system.ended(ids[-1]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the last of {len(ids)} signalled sagas did not end in time")
        await asyncio.sleep(COMPLETION_POLL)
    found: dict[str, dict[str, Any]] = {}
    pending = ids
    while True:
        found.update(await system.results(pending))
        pending = [i for i in pending if not found.get(i, {}).get("ended")]
        if not pending:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} signalled sagas did not end")
        await asyncio.sleep(10 * COMPLETION_POLL)


async def _signal(
    system: WaitsSystem, args: argparse.Namespace, mode: str, ids: list[str]
) -> dict[str, Any]:
    """Signal the sagas; return the times around each signal call and what each recorded.

    ``steady``: one every ``interval`` seconds on a fixed schedule; ``flood``: from
    ``tasks`` coroutines at once.
    """
    times: dict[str, list[float]] = {}

    async def one(saga_id: str) -> None:
        before = time.time()
        await system.signal(saga_id)
        times[saga_id] = [before, time.time()]

    if mode == "steady":
        start = time.monotonic()
        for i, saga_id in enumerate(ids):
            delay = start + i * args.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await one(saga_id)
    else:
        await fan_out(one, ids, args.tasks)
    found = await _wait_ended(system, ids, args.timeout)
    rows = []
    for saga_id in ids:
        row = found.get(saga_id, {})
        rows.append([*times[saga_id], row.get("t_resume"), row.get("t_done"), bool(row.get("ok"))])
    return {"fields": ["t_before", "t_after", "t_resume", "t_done", "ok"], "sagas": rows}


async def _commands(system: WaitsSystem, args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Run the parent's commands, one per line, until ``quit`` or the end of the input.

    ``rss``; ``park KIND PREFIX FIRST N``; ``steady PREFIX FIRST N``; ``flood PREFIX FIRST
    N``. Each answers one JSON line. The end of standard input means the parent ended.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            words = line.decode().split()
            if not words or words == ["quit"]:
                break
            if words[0] == "rss":
                emit(rss())
            elif words[0] == "park":
                kind, prefix, first, n = words[1], words[2], int(words[3]), int(words[4])
                emit(await _park(system, args, saga_ids(prefix, first, n), kind))
            else:
                prefix, first, n = words[1], int(words[2]), int(words[3])
                emit(await _signal(system, args, words[0], saga_ids(prefix, first, n)))
    finally:
        stop.set()


async def _play(system: WaitsSystem, args: argparse.Namespace) -> dict[str, Any]:
    info = await system.open()
    try:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        serving = None
        if args.role == "worker":
            serving = asyncio.create_task(system.serve(stop))
            await asyncio.sleep(0.2)
            if serving.done():
                serving.result()  # raises what made serve() end early
        print("ready", flush=True)
        commands = asyncio.create_task(_commands(system, args, stop))
        await stop.wait()
        if serving is not None:
            await serving
        if commands.done():
            commands.result()  # raises what failed a command
        else:
            commands.cancel()
    finally:
        await system.close()
    return {"info": info}


def role_args(system: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m bench.systems.waits_{system}")
    parser.add_argument("--role", choices=("worker", "client"), required=True)
    parser.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--location", required=True, help="SQLite path or PostgreSQL DSN")
    parser.add_argument("--concurrency", type=int, default=200, help="lexigram: serve()")
    parser.add_argument("--tasks", type=int, default=16, help="starting/signalling coroutines")
    parser.add_argument("--interval", type=float, default=0.05, help="steady: seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="per command, seconds")
    parser.add_argument("--dbos-poll", type=float, default=0.1, help="DBOS on SQLite")
    parser.add_argument("--journal-mode", default="WAL")
    parser.add_argument("--synchronous", default="FULL")
    ns = parser.parse_args(argv)
    ns.journal_mode = ns.journal_mode.upper()
    ns.synchronous = ns.synchronous.upper()
    return ns


def role_main(factory: Callable[[argparse.Namespace], WaitsSystem], system: str) -> None:
    """Parse the command line, play the role, print its JSON line."""
    args = role_args(system)
    emit(asyncio.run(_play(factory(args), args)))


# ---------------------------------------------------------------------- the store's size


def sqlite_bytes(path: str) -> dict[str, Any]:
    """The file and its WAL after a truncating checkpoint (retried while readers block it)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        for _ in range(50):
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            time.sleep(0.1)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    files = [Path(f"{path}{suffix}") for suffix in ("", "-wal")]
    total = sum(file.stat().st_size for file in files if file.exists())
    return {"bytes": total, "live_bytes": (pages - free) * page_size, "checkpoint_busy": busy}


async def postgres_bytes(dsn: str, schema: str, vacuum: str) -> dict[str, Any]:
    """``pg_total_relation_size`` (and ``pg_indexes_size``) summed over the schema's tables.

    ``vacuum``: ``"first"`` runs ``VACUUM FULL`` before measuring (a baseline without dead
    rows); ``"after"`` measures, runs it, and measures again (``live_bytes``); ``""``
    only measures.
    """
    import asyncpg

    tables = (
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind = 'r'"
    )
    sizes = (
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0), "
        f"coalesce(sum(pg_indexes_size(c.oid)), 0) {tables}"
    )
    conn = await asyncpg.connect(dsn, timeout=10)
    try:

        async def vacuum_full() -> None:
            for row in await conn.fetch(f"SELECT c.relname {tables}", schema):
                await conn.execute(f'VACUUM FULL "{schema}"."{row["relname"]}"')

        if vacuum == "first":
            await vacuum_full()
        total, indexes = await conn.fetchrow(sizes, schema)
        found: dict[str, Any] = {"bytes": int(total), "index_bytes": int(indexes)}
        if vacuum == "first":
            found["live_bytes"], found["live_index_bytes"] = found["bytes"], found["index_bytes"]
        elif vacuum == "after":
            await vacuum_full()
            total, indexes = await conn.fetchrow(sizes, schema)
            found["live_bytes"], found["live_index_bytes"] = int(total), int(indexes)
    finally:
        await conn.close()
    return found


def store_bytes(args: argparse.Namespace, vacuum: str = "") -> dict[str, Any]:
    if args.store == "sqlite":
        return sqlite_bytes(args.location)
    return asyncio.run(postgres_bytes(args.location, PG_SCHEMAS[args.system], vacuum))


# ---------------------------------------------------------------------- the run


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    fields = report["fields"]
    return [dict(zip(fields, saga, strict=True)) for saga in report["sagas"]]


def _complete(row: dict[str, Any]) -> bool:
    return bool(row["ok"]) and row["t_resume"] is not None and row["t_done"] is not None


def latency_fields(report: dict[str, Any]) -> dict[str, Any]:
    rows = _rows(report)
    done = [r for r in rows[LATENCY_WARMUP:] if _complete(r)]
    resume = [(r["t_resume"] - r["t_after"]) * 1000 for r in done]
    return {
        "latency_n": len(done),
        "resume_p50_ms": percentile(resume, 50),
        "resume_p99_ms": percentile(resume, 99),
        "resume_max_ms": max(resume, default=float("nan")),
        "signal_call_p50_ms": percentile([(r["t_after"] - r["t_before"]) * 1000 for r in rows], 50),
        "latency_wrong": sum(1 for r in rows if not _complete(r)),
    }


def throughput_fields(report: dict[str, Any]) -> dict[str, Any]:
    rows = _rows(report)
    done = [r for r in rows if _complete(r)]
    first = min(r["t_before"] for r in rows)
    signalled = max(r["t_after"] for r in rows)
    last = max((r["t_done"] for r in done), default=signalled)
    loaded = [(r["t_resume"] - r["t_after"]) * 1000 for r in done]
    return {
        "signal_n": len(rows),
        "signal_seconds": last - first,
        "sagas_per_s": len(rows) / (last - first),
        "signal_calls_per_s": len(rows) / (signalled - first),
        "loaded_resume_p50_ms": percentile(loaded, 50),
        "throughput_wrong": len(rows) - len(done),
    }


def _role_command(args: argparse.Namespace, role: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        f"bench.systems.waits_{args.system}",
        *("--role", role, "--store", args.store, "--location", args.location),
        *("--concurrency", str(args.concurrency), "--tasks", str(args.tasks)),
        *("--interval", str(args.interval), "--timeout", str(args.timeout)),
        *("--dbos-poll", str(args.dbos_poll)),
        *("--journal-mode", args.journal_mode, "--synchronous", args.synchronous),
    ]


async def _prepare_store(args: argparse.Namespace) -> dict[str, Any]:
    if args.store == "postgres":
        args.location = await recreate_database(args.pg_dsn, PG_DATABASES[args.system])
        return {"postgres": {"server_version": await postgres_version(args.location)}}
    path = args.workdir / f"waits-{args.system}-{os.getpid()}.sqlite"
    remove_sqlite(path)
    if args.system == "dbos":  # DBOS leaves journal_mode alone: WAL persists in the file
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA journal_mode={args.journal_mode}")
        conn.close()
    args.location = str(path)
    return {}


class Run:
    """The two role processes and the commands the phases send them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[Child] = []
        self.phases = Phases()

    def start(self, role: str) -> Child:
        args = self.args
        log = args.workdir / f"waits-{args.system}-{role}-{os.getpid()}.log"
        child = Child(role, _role_command(args, role), log)
        self.children.append(child)
        child.expect("ready", READY_TIMEOUT)
        return child

    def ask(self, child: Child, command: str) -> dict[str, Any]:
        child.send(command)
        return child.next_json(self.args.timeout + 60)

    def park(self, kind: str, prefix: str, first: int, n: int) -> dict[str, Any]:
        parker = self.by_role(PARKER[self.args.system])
        return self.ask(parker, f"park {kind} {prefix} {first} {n}")

    def by_role(self, role: str) -> Child:
        return next(c for c in self.children if c.name == role)

    def measure(self, vacuum: str = "") -> dict[str, Any]:
        """The worker's memory and the store's size, once things settled."""
        time.sleep(SETTLE_SECONDS)
        return {**self.ask(self.by_role("worker"), "rss"), **store_bytes(self.args, vacuum)}


def _per_saga(before: dict[str, Any], after: dict[str, Any], field: str, n: int) -> float:
    return float(after[field] - before[field]) / n


def measure_all(run: Run) -> dict[str, Any]:
    args = run.args
    n, tenth = args.n, max(args.n // 10, 1)
    warm = run.park("signal", "warm", 0, args.warmup_n)
    run.ask(run.by_role("client"), f"flood warm 0 {args.warmup_n}")
    run.phases.done("warm-up")
    points = {"before": run.measure("first")}
    parking = [run.park("signal", "p", 0, tenth)]
    points["tenth"] = run.measure()
    parking.append(run.park("signal", "p", tenth, n - tenth))
    points["all"] = all_parked = run.measure("after")
    run.phases.done("parking")
    if args.timer_n > 0:  # before any saga ended: no memory they freed is reused here
        fields: dict[str, Any] = {
            "timer_parking_seconds": run.park("timer", "t", 0, args.timer_n)["seconds"]
        }
        points["timers"] = run.measure()
        for field in ("rss_bytes", "blocks"):
            fields[f"timer_{field}_per_saga"] = _per_saga(
                all_parked, points["timers"], field, args.timer_n
            )
        run.phases.done("timers")
    else:
        fields = {}
    latency_n = args.latency_n + LATENCY_WARMUP
    client = run.by_role("client")
    fields.update(latency_fields(run.ask(client, f"steady p 0 {latency_n}")))
    run.phases.done("latency")
    fields.update(throughput_fields(run.ask(client, f"flood p {latency_n} {args.signal_n}")))
    run.phases.done("throughput")
    points["signalled"] = run.measure()
    before = points["before"]
    fields.update(
        parked=n,
        sizes={
            "n": n,
            "signal_n": args.signal_n,
            "latency_n": args.latency_n,
            "timer_n": args.timer_n,
            "warmup_n": args.warmup_n,
            "interval": args.interval,
            "tasks": args.tasks,
        },
        warmup_parking_seconds=warm["seconds"],
        parking_seconds=sum(p["seconds"] for p in parking),
        parked_per_s=n / sum(p["seconds"] for p in parking),
        rss_before_bytes=before["rss_bytes"],
        rss_tenth_bytes=points["tenth"]["rss_bytes"],
        rss_parked_bytes=all_parked["rss_bytes"],
        rss_bytes_per_saga=_per_saga(before, all_parked, "rss_bytes", n),
        rss_tenth_to_all_bytes_per_saga=_per_saga(
            points["tenth"], all_parked, "rss_bytes", n - tenth
        ),
        blocks_per_saga=_per_saga(before, all_parked, "blocks", n),
        blocks_tenth_to_all_per_saga=_per_saga(points["tenth"], all_parked, "blocks", n - tenth),
        hwm_bytes=points["signalled"]["hwm_bytes"],
        store_bytes_per_saga=_per_saga(before, all_parked, "bytes", n),
        store_tenth_bytes_per_saga=_per_saga(before, points["tenth"], "bytes", tenth),
    )
    for field in ("live_bytes", "index_bytes", "live_index_bytes"):
        if field in all_parked:
            fields[f"store_{field}_per_saga"] = _per_saga(before, all_parked, field, n)
    fields["points"] = points
    return fields


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = asyncio.run(_prepare_store(args))
    waits = Run(args)
    succeeded = False
    try:
        worker = waits.start("worker")  # first: it creates the schema
        client = waits.start("client")
        waits.phases.done("start")
        fields = measure_all(waits)
        client.send("quit")
        info.update(client.result(STOP_TIMEOUT)["info"])
        worker.proc.send_signal(signal.SIGTERM)
        try:
            info.update(worker.result(STOP_TIMEOUT)["info"])
        except RuntimeError as exc:  # a slow stop is not the benchmark's business
            info["worker_stop"] = str(exc)[:200]
        waits.phases.done("stop")
        succeeded = True
    finally:
        for child in waits.children:  # logs stay in the work directory after a failure
            child.close(keep_log=not succeeded)
        if args.store == "sqlite":
            remove_sqlite(Path(args.location))
    return {
        "system": args.system,
        "workload": "waits",
        "store": args.store,
        "inflight": args.concurrency,
        "concurrency": args.concurrency,
        "info": info,
        "wrong": fields["latency_wrong"] + fields["throughput_wrong"],
        "phase_seconds": waits.phases.seconds,
        **fields,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.systems.waits_bench")
    parser.add_argument("--system", choices=SYSTEMS, required=True)
    parser.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--n", type=int, default=10_000, help="sagas parked at once")
    parser.add_argument("--signal-n", type=int, default=2_000, help="throughput phase")
    parser.add_argument("--latency-n", type=int, default=100, help="latency phase")
    parser.add_argument("--timer-n", type=int, default=0, help="timer phase (0: none)")
    parser.add_argument("--warmup-n", type=int, default=0, help="0: see WARMUP_ROUNDS")
    parser.add_argument("--concurrency", type=int, default=200, help="lexigram: serve()")
    parser.add_argument("--tasks", type=int, default=16, help="starting/signalling coroutines")
    parser.add_argument("--interval", type=float, default=0.05, help="latency phase, seconds")
    parser.add_argument("--dbos-poll", type=float, default=0.1, help="DBOS on SQLite, seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="per phase, seconds")
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/work"))
    parser.add_argument("--journal-mode", default="WAL")
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN))
    args = parser.parse_args(argv)
    if args.n < 10 or args.latency_n + LATENCY_WARMUP + args.signal_n > args.n:
        parser.error("--n must be >= 10 and hold --latency-n + 5 + --signal-n sagas")
    if args.warmup_n <= 0:
        args.warmup_n = min(WARMUP_ROUNDS * args.concurrency, max(args.n // 10, 50))
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.location = ""
    return args


def main() -> None:
    emit(run(parse_args()))


if __name__ == "__main__":
    main()
