"""A separate OS process working on a SQLite saga store (for tests/test_store_sqlite.py).

Usage::

    python tests/support/sqlite_worker.py insert PATH PREFIX COUNT
    python tests/support/sqlite_worker.py claim PATH WORKER LIMIT
    python tests/support/sqlite_worker.py crash PATH PREFIX COUNT

The process prints ``ready``, waits for a line on stdin (so the test can release several
processes at the same instant), then works and prints one JSON line: the ids it inserted
or claimed. The test side starts such processes with :func:`spawn` / :func:`run_workers`.

- ``insert`` opens the store only once released (so that processes race to create the
  schema of a fresh file) and saves ``COUNT`` sagas ``PREFIX-0`` ... one by one.
- ``crash`` saves ``COUNT`` sagas concurrently, printing each id as its save returns,
  and kills itself with SIGKILL (no close, no cleanup) once half of them returned.
- ``claim`` opens the store before saying ``ready``, then claims ``LIMIT`` sagas named
  ``orders`` at a time until none is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime

from lexigram.events.sagas.sqlite import SQLiteSagaStore
from lexigram.events.sagas.types import SagaRecord, SagaStatus


def wait_for_go() -> None:
    """Say ready and block until the test releases this process."""
    print("ready", flush=True)
    sys.stdin.readline()


async def insert(path: str, prefix: str, count: int) -> list[str]:
    """Save ``count`` new sagas; return their ids."""
    now = datetime.now(UTC)
    wait_for_go()
    async with SQLiteSagaStore(path) as store:
        ids = [f"{prefix}-{index}" for index in range(count)]
        for saga_id in ids:
            record = SagaRecord(
                saga_id, "orders", SagaStatus.RUNNING, {"n": saga_id}, created_at=now
            )
            await store.save(record)
    return ids


async def crash(path: str, prefix: str, count: int) -> list[str]:
    """Save sagas concurrently, report each as its save returns, then die abruptly."""
    now = datetime.now(UTC)
    store = SQLiteSagaStore(path)
    wait_for_go()

    returned = 0

    async def save(saga_id: str) -> None:
        nonlocal returned
        await store.save(SagaRecord(saga_id, "orders", SagaStatus.RUNNING, created_at=now))
        print(json.dumps(saga_id), flush=True)
        returned += 1
        if returned == count // 2:  # the other half is still queued or being committed
            os.kill(os.getpid(), signal.SIGKILL)

    await asyncio.gather(*(save(f"{prefix}-{index}") for index in range(count)))
    raise AssertionError("unreachable")


async def claim(path: str, worker: str, limit: int) -> list[str]:
    """Claim batches of sagas until none is left; return the ids claimed."""
    taken: list[str] = []
    async with SQLiteSagaStore(path) as store:
        await store.load("warm-up")  # the file is open before the race starts
        wait_for_go()
        while True:
            batch = await store.claim(
                worker, f"{worker}-lease", lease_seconds=300, saga_names=["orders"], limit=limit
            )
            if not batch:
                return taken
            taken += [record.saga_id for record in batch]


async def spawn(command: list[str]) -> asyncio.subprocess.Process:
    """Start this script in a new Python process, with pipes for stdin and stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_workers(*commands: list[str]) -> list[list[str]]:
    """Start one process per command, release them at once, return what each printed."""
    procs = [await spawn(command) for command in commands]
    for proc in procs:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        assert line == b"ready\n", line
    results = await asyncio.gather(*(proc.communicate(b"go\n") for proc in procs))
    outputs: list[list[str]] = []
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    return outputs


def main(argv: list[str]) -> None:
    """Run one command from the command line."""
    command, path, name, number = argv
    runner = {"insert": insert, "claim": claim, "crash": crash}[command]
    ids = asyncio.run(runner(path, name, int(number)))
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
