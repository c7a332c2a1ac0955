"""The processes of the service benchmark, for any system: prepare, worker, enqueuer.

``bench/systems/service_bench.py`` (the parent) starts them as ``python -m
bench.systems.service_<system> --role ROLE ...``. A system module implements
:class:`ServiceSystem` and calls :func:`role_main`; everything around the system's own
calls (timing, pacing, waiting for the sagas to end) is here, the same for every system.

- ``prepare``: create the schema (and the queue) once, before the workers race for it.
- ``worker``: serve until SIGTERM (the documented way to stop a worker), then print one
  JSON line. It answers ``cpu`` on standard input with its CPU time, and stops when
  standard input closes, so that none outlives a parent that was killed.
- ``enqueue``: connect, say ``ready``, then run the parent's commands, one per line of
  standard input (so that its start-up is not timed): ``steady N PREFIX`` enqueues ``N``
  sagas one every ``interval`` seconds, on a fixed schedule (the workers are idle when
  each arrives, so what is measured is how fast an idle worker wakes up); ``flood N
  PREFIX`` enqueues them from ``tasks`` coroutines as fast as they can. After each, it
  waits until every saga ended and prints one JSON line: per saga, the time before and
  after the enqueue call and what the saga recorded in its steps. ``quit`` ends it.

Every saga's step 1 records ``t_pickup`` (``time.time()`` when the step body starts) and the
worker's index, step 3 records ``t_done`` (when its body ends). The same code for every
system: no system's own timestamps are compared with another's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

ROLES = ("prepare", "worker", "enqueue")
COMPLETION_POLL = 0.05
"""Seconds between two looks at the last enqueued saga (one saga read: nearly free)."""


class ServiceSystem(Protocol):
    """What a system module provides to the roles."""

    async def open(self) -> dict[str, Any]:
        """Connect to the store; return facts to report (versions, pragmas)."""
        ...

    async def prepare(self) -> None:
        """Create the schema and whatever a queue needs, once."""
        ...

    async def serve(self, stop: asyncio.Event) -> None:
        """Run as a worker until ``stop`` is set, then stop serving."""
        ...

    async def enqueue(self, i: int, saga_id: str) -> None:
        """Durably enqueue saga number ``i`` under ``saga_id``."""
        ...

    async def ended(self, saga_id: str) -> bool:
        """Whether the saga reached a terminal state."""
        ...

    async def results(self, saga_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per saga id: ``ended``, ``ok`` (completed) and what its steps recorded."""
        ...

    async def close(self) -> None:
        """Release everything ``open`` opened."""
        ...


def parse_args(system: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m bench.systems.service_{system}")
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--location", required=True, help="SQLite path or PostgreSQL DSN")
    parser.add_argument("--index", type=int, default=0, help="the worker's number")
    parser.add_argument("--concurrency", type=int, default=64, help="sagas per worker")
    parser.add_argument("--interval", type=float, default=0.02, help="steady: seconds")
    parser.add_argument("--tasks", type=int, default=16, help="flood: enqueueing coroutines")
    parser.add_argument("--timeout", type=float, default=300.0, help="enqueue: seconds")
    parser.add_argument("--journal-mode", default="WAL")
    parser.add_argument("--synchronous", default="FULL")
    ns = parser.parse_args(argv)
    ns.journal_mode = ns.journal_mode.upper()
    ns.synchronous = ns.synchronous.upper()
    return ns


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------- roles


async def _commands(stop: asyncio.Event) -> None:
    """Answer ``cpu`` lines from the parent; set ``stop`` when standard input closes.

    ``cpu`` prints this process's CPU time (every thread, those that ended included). The
    end of standard input means the parent ended, even killed: no worker outlives it.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"cpu":
            emit({"cpu_seconds": time.process_time()})
    stop.set()


async def _worker(system: ServiceSystem, info: dict[str, Any]) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    commands = asyncio.create_task(_commands(stop))
    serving = asyncio.create_task(system.serve(stop))
    await asyncio.sleep(0.2)  # serve() has claimed once and is waiting for work
    if serving.done():
        serving.result()  # raises what made serve() end early
    print("ready", flush=True)
    await serving
    commands.cancel()
    return {"info": info, "cpu_seconds": time.process_time()}


async def _enqueue_all(
    system: ServiceSystem, args: argparse.Namespace, mode: str, n: int, prefix: str
) -> list[list[Any]]:
    """Enqueue the sagas; return ``[saga_id, t_before, t_after]`` per saga."""
    ids = [f"{prefix}-{i:06d}" for i in range(n)]
    times: list[list[Any]] = [[saga_id, 0.0, 0.0] for saga_id in ids]

    async def one(i: int) -> None:
        times[i][1] = time.time()
        await system.enqueue(i, ids[i])
        times[i][2] = time.time()

    if mode == "steady":
        start = time.monotonic()
        for i in range(n):
            delay = start + i * args.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await one(i)
        return times
    next_i = 0

    async def flood() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            await one(i)

    await asyncio.gather(*(flood() for _ in range(args.tasks)))
    return times


async def _wait_ended(
    system: ServiceSystem, saga_ids: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Wait until every saga ended; return their :meth:`ServiceSystem.results`.

    Sagas are claimed oldest first, so the last one enqueued ends (nearly) last: it is
    watched alone, one saga read at a time, which keeps this process out of the workers'
    way; then every saga is read once (again, if some had not ended yet).
    """
    deadline = time.monotonic() + timeout
    while not await system.ended(saga_ids[-1]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the last of {len(saga_ids)} sagas did not end in time")
        await asyncio.sleep(COMPLETION_POLL)
    while True:
        found = await system.results(saga_ids)
        pending = [i for i in saga_ids if not found.get(i, {}).get("ended")]
        if not pending:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(saga_ids)} sagas did not end in time")
        await asyncio.sleep(10 * COMPLETION_POLL)


async def _enqueuer(
    system: ServiceSystem, args: argparse.Namespace, info: dict[str, Any]
) -> dict[str, Any]:
    """Run the parent's commands (``MODE N PREFIX``, one per line) until ``quit``."""
    print("ready", flush=True)
    while True:
        command = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not command or command == ["quit"]:
            return {"info": info}
        mode, n, prefix = command[0], int(command[1]), command[2]
        times = await _enqueue_all(system, args, mode, n, prefix)
        found = await _wait_ended(system, [row[0] for row in times], args.timeout)
        sagas = []
        for saga_id, t_before, t_after in times:
            row = found.get(saga_id, {})
            sagas.append(
                [
                    t_before,
                    t_after,
                    row.get("t_pickup"),
                    row.get("t_done"),
                    row.get("worker"),
                    bool(row.get("ok")),
                ]
            )
        emit(
            {
                "mode": mode,
                "fields": ["t_before", "t_after", "t_pickup", "t_done", "worker", "ok"],
                "sagas": sagas,
            }
        )


async def _run(system: ServiceSystem, args: argparse.Namespace) -> dict[str, Any]:
    info = await system.open()
    try:
        if args.role == "prepare":
            await system.prepare()
            return {"info": info}
        if args.role == "worker":
            return await _worker(system, info)
        return await _enqueuer(system, args, info)
    finally:
        await system.close()


def role_main(factory: Callable[[argparse.Namespace], ServiceSystem], system: str) -> None:
    """Parse the command line, play the role, print its JSON line."""
    args = parse_args(system)
    emit(asyncio.run(_run(factory(args), args)))
