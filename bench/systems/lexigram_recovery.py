"""Recovery: N interrupted sagas resumed by two worker processes, against N fresh ones.

``python -m bench.systems.lexigram_recovery --store sqlite --n 10000`` runs three phases,
each worker in its own process, and prints one JSON line:

1. **fresh**: two workers on an empty store each start ``N/2`` sagas at once (all in
   flight) and wait for them. Wall time from the first worker's start to the last one's end.
2. **crash**: a process starts ``N`` sagas whose step 2 blocks forever; once every saga is
   inside step 2 (so step 1's completion is durable for all of them) the process is
   killed with SIGKILL, leaving ``N`` sagas ``RUNNING`` in the store, leased to a dead
   worker. Its lease (``lease_seconds=2``) is left to expire before phase 3.
3. **recover**: two new workers on the same store call ``recover()`` at the same moment
   and wait for every saga they resumed. Wall time as in phase 1.

Every step body appends ``"<saga id> <step>"`` to a log file of its own process (an
``O_APPEND`` write, as a step's side effect would be). The check afterwards: every saga
is ``COMPLETED`` in the store; step 1 ran exactly once (in the crashed process: its
completion was durable, so no worker ran it again), steps 2 and 3 ran exactly once in the
recovering workers (step 2 had also *started* in the crashed process: the step in flight
at a crash may run again). ``ran_twice`` counts completed steps that ran again; it must
be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
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
from lexigram.events.sagas import (
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaManager,
    SagaStatus,
    SagaStore,
    saga_step,
)

PG_DATABASE = "lexigram_recovery"
CRASH_LEASE_SECONDS = 2.0
STEPS = ("reserve", "charge", "confirm")

_log_fd = -1
_block_in_charge = False
_in_charge = 0
_all_in_charge: asyncio.Event | None = None
_expected_in_charge = 0


def _log(ctx: SagaContext, step: str) -> None:
    os.write(_log_fd, f"{ctx.saga_id} {step}\n".encode())


class RecoverableSaga(SagaBase):
    name = "bench_recoverable"

    @saga_step("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        _log(ctx, "reserve")
        ctx["reserved"] = True

    @saga_step("reserve", compensation=True)
    async def release(self, ctx: SagaContext) -> None:
        ctx["reserved"] = False

    @saga_step("charge")
    async def charge(self, ctx: SagaContext) -> None:
        global _in_charge
        _log(ctx, "charge")
        if _block_in_charge:
            _in_charge += 1
            if _in_charge == _expected_in_charge and _all_in_charge is not None:
                _all_in_charge.set()
            await asyncio.Event().wait()  # never set: the process is killed in here
        ctx["charged"] = ctx["i"]

    @saga_step("charge", compensation=True)
    async def refund(self, ctx: SagaContext) -> None:
        ctx["charged"] = None

    @saga_step("confirm")
    async def confirm(self, ctx: SagaContext) -> None:
        _log(ctx, "confirm")
        ctx["confirmed"] = True

    @saga_step("confirm", compensation=True)
    async def unconfirm(self, ctx: SagaContext) -> None:
        ctx["confirmed"] = False


def _open_store(kind: str, location: str) -> SagaStore:
    if kind == "sqlite":
        from lexigram.events.sagas.sqlite import SQLiteSagaStore

        return SQLiteSagaStore(location, synchronous="FULL", journal_mode="WAL")
    from lexigram.events.sagas.postgres import PostgresSagaStore

    return PostgresSagaStore(location)


async def _close_store(store: SagaStore) -> None:
    close = getattr(store, "close", None)
    if close is not None:
        await close()


# ---------------------------------------------------------------------- child roles


def _saga_id(i: int) -> str:
    return f"rec-{i:06d}"


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    global _log_fd, _block_in_charge, _all_in_charge, _expected_in_charge
    _log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    store = _open_store(args.store, args.location)
    config = SagaConfig(lease_seconds=CRASH_LEASE_SECONDS) if args.role == "crash" else None
    manager = SagaManager(store, config=config, worker_id=f"{args.role}-{args.index}")
    manager.register(RecoverableSaga)
    first = args.index * args.count
    ids = [_saga_id(i) for i in range(first, first + args.count)]
    if args.role == "crash":
        _block_in_charge = True
        _all_in_charge = asyncio.Event()
        _expected_in_charge = len(ids)
        await asyncio.gather(
            *(manager.start(RecoverableSaga.name, {"i": i}, sid) for i, sid in enumerate(ids))
        )
        await _all_in_charge.wait()
        print("suspended", flush=True)
        await asyncio.Event().wait()  # killed here
    await manager.get("warm-up")  # open the store (schema, connections) before the clock
    print("ready", flush=True)
    sys.stdin.readline()
    t_start = time.time()
    if args.role == "fresh":
        started = await asyncio.gather(
            *(manager.start(RecoverableSaga.name, {"i": i}, sid) for i, sid in enumerate(ids))
        )
        resumed = len(started)
    else:
        resumed = await manager.recover()
        started = list(manager.running())
    completed = 0
    for saga_id in started:
        record = await manager.wait(saga_id)
        completed += record.status is SagaStatus.COMPLETED
    t_end = time.time()
    await manager.close()
    await _close_store(store)
    return {"t_start": t_start, "t_end": t_end, "sagas": resumed, "waited_completed": completed}


# ---------------------------------------------------------------------- parent


def _spawn(args: argparse.Namespace, role: str, index: int, count: int, log: Path) -> Any:
    command = [
        sys.executable,
        "-m",
        "bench.systems.lexigram_recovery",
        "--role",
        role,
        "--store",
        args.store,
        "--location",
        args.location,
        "--index",
        str(index),
        "--count",
        str(count),
        "--log",
        str(log),
    ]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )


def _expect(stream: IO[str] | None, word: str) -> None:
    assert stream is not None
    line = stream.readline()
    if line.strip() != word:
        raise RuntimeError(f"child said {line!r}, expected {word!r}")


def _run_workers(args: argparse.Namespace, role: str, logs: list[Path]) -> dict[str, Any]:
    """Start two workers, release them together, return the wall time and their reports."""
    count = args.n // 2
    workers = [_spawn(args, role, k, count, logs[k]) for k in range(2)]
    try:
        for worker in workers:
            _expect(worker.stdout, "ready")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            assert worker.stdout is not None
            out = worker.stdout.read()
            if worker.wait(timeout=args.timeout) != 0:
                raise RuntimeError(f"{role} worker failed: {out[-500:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    seconds = max(r["t_end"] for r in reports) - min(r["t_start"] for r in reports)
    return {"seconds": seconds, "workers": reports}


def _read_log(path: Path) -> collections.Counter[tuple[str, str]]:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            saga_id, step = line.split()
            counts[saga_id, step] += 1
    return counts


async def _statuses(args: argparse.Namespace) -> dict[str, int]:
    store = _open_store(args.store, args.location)
    try:
        found = {}
        for status in SagaStatus:
            records = await store.list(status=status, limit=args.n * 2)
            if records:
                found[status.value] = len(records)
        return found
    finally:
        await _close_store(store)


async def _prepare(args: argparse.Namespace, phase: str) -> None:
    if args.store == "sqlite":
        path = args.workdir / f"recovery-{phase}-{os.getpid()}.sqlite"
        remove_sqlite(path)
        args.location = str(path)
    else:
        args.location = await recreate_database(args.pg_dsn, PG_DATABASE)
    store = _open_store(args.store, args.location)
    await store.load("schema")  # create the schema once, before the workers race for it
    await _close_store(store)


def _check_recovery(args: argparse.Namespace, crash_log: Path, logs: list[Path]) -> dict[str, Any]:
    crashed = _read_log(crash_log)
    after: collections.Counter[tuple[str, str]] = collections.Counter()
    for log in logs:
        after.update(_read_log(log))
    ids = [_saga_id(i) for i in range(args.n)]
    ran_twice = sum(1 for sid in ids if after[sid, "reserve"] > 0 or crashed[sid, "reserve"] > 1)
    ran_twice += sum(1 for sid in ids for step in ("charge", "confirm") if after[sid, step] > 1)
    missing = sum(
        1
        for sid in ids
        if crashed[sid, "reserve"] != 1 or after[sid, "charge"] < 1 or after[sid, "confirm"] < 1
    )
    return {
        "ran_twice": ran_twice,
        "missing_steps": missing,
        "charge_rerun_after_crash": sum(1 for sid in ids if after[sid, "charge"] == 1),
    }


def _parent(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "system": "lexigram",
        "workload": "recovery",
        "store": args.store,
        "inflight": args.n,
        "n": args.n,
        "info": {},
    }
    if args.store == "postgres":
        result["info"]["postgres"] = {"server_version": asyncio.run(postgres_version(args.pg_dsn))}
    else:
        result["info"]["sqlite"] = {"journal_mode": "WAL", "synchronous": "FULL"}
    tag = f"{args.store}-{os.getpid()}"
    fresh_logs = [args.workdir / f"fresh-{tag}-{k}.log" for k in range(2)]
    crash_log = args.workdir / f"crash-{tag}.log"
    recover_logs = [args.workdir / f"recover-{tag}-{k}.log" for k in range(2)]
    for log in [*fresh_logs, crash_log, *recover_logs]:
        log.unlink(missing_ok=True)

    asyncio.run(_prepare(args, "fresh"))
    fresh = _run_workers(args, "fresh", fresh_logs)
    fresh_status = asyncio.run(_statuses(args))
    _cleanup(args)

    asyncio.run(_prepare(args, "recover"))
    crasher = _spawn(args, "crash", 0, args.n, crash_log)
    try:
        _expect(crasher.stdout, "suspended")
    finally:
        os.kill(crasher.pid, signal.SIGKILL)
        crasher.wait()
    before = asyncio.run(_statuses(args))
    time.sleep(CRASH_LEASE_SECONDS + 1.0)  # the dead worker's leases expire
    recovered = _run_workers(args, "recover", recover_logs)
    after = asyncio.run(_statuses(args))
    check = _check_recovery(args, crash_log, recover_logs)
    _cleanup(args)
    for log in [*fresh_logs, crash_log, *recover_logs]:
        log.unlink(missing_ok=True)

    ok = (
        fresh_status == {"completed": args.n}
        and after == {"completed": args.n}
        and check["ran_twice"] == 0
        and check["missing_steps"] == 0
    )
    result.update(
        fresh_seconds=fresh["seconds"],
        recovery_seconds=recovered["seconds"],
        ratio=recovered["seconds"] / fresh["seconds"],
        resumed_per_worker=[w["sagas"] for w in recovered["workers"]],
        statuses_before_recovery=before,
        statuses_after_recovery=after,
        statuses_after_fresh=fresh_status,
        wrong=0 if ok else 1,
        **check,
    )
    return result


def _cleanup(args: argparse.Namespace) -> None:
    if args.store == "sqlite":
        remove_sqlite(Path(args.location))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.systems.lexigram_recovery")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/work"))
    parser.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN))
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--role", choices=("fresh", "crash", "recover"))
    parser.add_argument("--location", default="")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--log", default="")
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    if args.role is not None:
        emit(asyncio.run(_child(args)))
        return
    module = "sqlite" if args.store == "sqlite" else "postgres"
    try:
        __import__(f"lexigram.events.sagas.{module}")
    except Exception as exc:  # the store is being written: report, do not fail the run
        emit(
            {
                "system": "lexigram",
                "workload": "recovery",
                "store": args.store,
                "inflight": args.n,
                "unavailable": f"{type(exc).__name__}: {exc}",
            }
        )
        return
    emit(_parent(args))


if __name__ == "__main__":
    main()
