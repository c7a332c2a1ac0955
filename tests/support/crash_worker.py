r"""A saga worker in its own OS process, for the crash, race and restart tests.

Usage (from the repository root; the script imports nothing from ``tests``)::

    python tests/support/crash_worker.py run --store sqlite --target PATH --worker W --log LOG \\
        --sagas '[["saga-1", {"fail": false}]]' [--kill-in step:2] [--kill-after-save 2] ...
    python tests/support/crash_worker.py recover --store postgres --target DSN --table T \\
        --worker W --log LOG [--until-idle | --expect N] [--ready] ...

Every step and compensation of :class:`CrashSaga` first appends a line to the
*side-effect log* (:class:`SideEffectLog`: one ``write`` on an ``O_APPEND`` descriptor,
then ``fsync``), and only then does what the process was told to do at that point:

- ``--kill-in POINT`` (``step:2``, ``compensation:1``...): SIGKILL this process;
- ``--hang-from-data --kill-when-hanging N``: a saga whose data says ``"hang": POINT``
  waits forever there; when ``N`` sagas are waiting, SIGKILL this process;
- ``--block-in POINT --release FILE``: wait until ``FILE`` exists, polling with
  ``asyncio.sleep`` (the heartbeat keeps running), or with ``--block-loop`` with
  ``time.sleep`` (the whole event loop, heartbeat included, is frozen: a paused worker);
- ``--delay S``: every step and compensation takes ``S`` seconds.

The store is wrapped in :class:`InstrumentedStore`, which logs every write (saves with
the version and step statuses written, rejected saves, claims, releases) and, with
``--kill-after-save N``, SIGKILLs the process right after its ``N``-th save returned: a
crash *between* persistence points.

``run`` starts the given sagas (spread over ``--groups`` managers whose leases differ, so
that after a kill their leases expire at different moments), waits for them and prints a
JSON summary line. ``recover`` calls ``recover()`` until ``--expect`` sagas were resumed,
or with ``--until-idle`` until no saga is left unfinished in the store, waits for the
sagas it resumed and prints a JSON summary line. With ``--ready`` it opens the store,
prints ``ready`` and waits for a line on stdin, so a test can release several recovering
processes at the same instant.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

from lexigram.events.sagas import (
    ConcurrencyConflictError,
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaManager,
    SagaRecord,
    SagaStatus,
    SagaStepResult,
    SagaStore,
    saga_step,
)
from lexigram.events.sagas.testing import StoreCall, StoreWrapper

__all__ = [
    "LIVE_STATUSES",
    "SAGA_NAME",
    "CrashSaga",
    "InstrumentedStore",
    "Probe",
    "SideEffectLog",
    "open_store",
    "recover_until",
]

T = TypeVar("T")

SAGA_NAME = "crash_saga"
LIVE_STATUSES = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
FAIL_MESSAGE = "step 3 declined: the saga's data asked it to fail"


class SideEffectLog:
    """An append-only JSON-lines file that several processes write to.

    Each entry is one ``write`` on an ``O_APPEND`` descriptor (so lines of concurrent
    writers never interleave) followed by ``fsync``: once ``write`` returns, the entry
    survives a SIGKILL of this process (and the machine's crash).
    """

    def __init__(self, path: str | os.PathLike[str], *, worker: str) -> None:
        self.path = Path(path)
        self.worker = worker
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, saga: str, **fields: Any) -> None:
        """Append one entry: what happened (``kind``), to which saga, by whom."""
        entry = {"kind": kind, "saga": saga, "w": self.worker, "pid": os.getpid(), **fields}
        os.write(self._fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def kill_self() -> NoReturn:
    """Die at once with SIGKILL: no cleanup, no lease released, nothing flushed."""
    os.kill(os.getpid(), signal.SIGKILL)
    while True:  # pragma: no cover - the signal is delivered before kill() returns
        time.sleep(1)


@dataclass
class Probe:
    """What this process does when one of its sagas enters a step or a compensation.

    The default probe does nothing but remember the points entered (``calls``): a saga
    built with it runs as an ordinary, uninterrupted saga.
    """

    log: SideEffectLog | None = None
    kill_in: frozenset[str] = frozenset()
    hang_from_data: bool = False
    kill_when_hanging: int = 1
    block_in: str | None = None
    release: Path | None = None
    block_loop: bool = False
    delay: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)
    hanging: int = 0

    async def enter(self, ctx: SagaContext, point: str) -> None:
        """Record the invocation durably, then kill, hang, block or delay as configured."""
        self.calls.append((ctx.saga_id, point))
        if self.log is not None:
            self.log.write(
                "call", ctx.saga_id, point=point, attempt=ctx.attempt, key=ctx.idempotency_key
            )
        if point in self.kill_in:
            kill_self()
        if self.hang_from_data and ctx.get("hang") == point:
            self.hanging += 1
            if self.hanging >= self.kill_when_hanging:
                kill_self()
            await asyncio.Event().wait()
        if point == self.block_in and self.release is not None:
            if self.block_loop:
                # On purpose: freeze the event loop (and so the heartbeat), like a worker
                # paused by a stop-the-world pause, a debugger or an overloaded host.
                while not self.release.exists():
                    time.sleep(0.01)  # noqa: ASYNC251
            else:
                while not self.release.exists():
                    await asyncio.sleep(0.01)
        if self.delay:
            await asyncio.sleep(self.delay)


def step_payload(n: int, ctx: SagaContext) -> dict[str, Any]:
    """What step ``n`` writes into the context: JSON that must round-trip exactly."""
    return {
        "n": n,
        "text": "crash \u2713 \u00fc\u00df \U0001f680 " * n,
        "big": 2**70 + n,
        "ratio": n / 10,
        "nested": [n, {"none": None, "even": n % 2 == 0, "list": list(range(n))}],
        "previous_output": ctx.step_results.get(f"s{n - 1}"),
    }


class CrashSaga(SagaBase):
    """Three steps, each with a compensation; step 3 fails when the data says ``fail``.

    So an uninterrupted run either completes (steps 1, 2, 3) or compensates (steps 1, 2,
    3 then compensations 2, 1; step 3 failed, so it is not compensated).
    """

    name = SAGA_NAME

    def __init__(self, probe: Probe | None = None) -> None:
        self.probe = probe if probe is not None else Probe()

    async def _step(self, ctx: SagaContext, n: int) -> dict[str, Any] | SagaStepResult:
        await self.probe.enter(ctx, f"step:{n}")
        if n == 3 and ctx.get("fail"):
            return SagaStepResult.fail(FAIL_MESSAGE)
        ctx[f"after_s{n}"] = step_payload(n, ctx)
        return {"step": n, "key": ctx.idempotency_key}

    async def _undo(self, ctx: SagaContext, n: int) -> None:
        await self.probe.enter(ctx, f"compensation:{n}")
        ctx[f"undone_s{n}"] = {"n": n, "saw": sorted(ctx.step_results)}

    @saga_step("s1")
    async def s1(self, ctx: SagaContext) -> dict[str, Any] | SagaStepResult:
        return await self._step(ctx, 1)

    @saga_step("s1", compensation=True)
    async def undo_s1(self, ctx: SagaContext) -> None:
        await self._undo(ctx, 1)

    @saga_step("s2")
    async def s2(self, ctx: SagaContext) -> dict[str, Any] | SagaStepResult:
        return await self._step(ctx, 2)

    @saga_step("s2", compensation=True)
    async def undo_s2(self, ctx: SagaContext) -> None:
        await self._undo(ctx, 2)

    @saga_step("s3")
    async def s3(self, ctx: SagaContext) -> dict[str, Any] | SagaStepResult:
        return await self._step(ctx, 3)

    @saga_step("s3", compensation=True)
    async def undo_s3(self, ctx: SagaContext) -> None:
        await self._undo(ctx, 3)


class InstrumentedStore(StoreWrapper):
    """Wraps a store: logs every write, and can SIGKILL the process after its N-th save.

    A save is logged only once the inner store returned (for the durable stores: once it
    is committed), so the log's ``save`` entries are writes that really landed.
    """

    def __init__(
        self,
        inner: SagaStore,
        log: SideEffectLog | None,
        *,
        kill_after_save: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.log = log
        self.kill_after_save = kill_after_save
        self.saves = 0
        self.claimed: builtins.list[str] = []

    def _note(self, kind: str, saga: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.write(kind, saga, **fields)

    async def forward(self, call: StoreCall[T]) -> T:
        """Forward ``call``; log the writes (and rejected saves); maybe die after a save."""
        try:
            result = await call.send(self.inner)
        except ConcurrencyConflictError:
            if call.method == "save":
                record: SagaRecord = call.arguments["record"]
                self._note("rejected", record.saga_id, v=record.version, status=record.status.value)
            raise
        if call.method == "save":
            self._saved(call.arguments["record"])
        elif call.method == "claim":
            self._claimed(cast("builtins.list[SagaRecord]", result))
        elif call.method == "release":
            self._note("release", call.arguments["saga_id"], held=result)
        return result

    def _saved(self, record: SagaRecord) -> None:
        self.saves += 1
        self._note(
            "save",
            record.saga_id,
            v=record.version,
            status=record.status.value,
            steps={name: step.status.value for name, step in record.steps.items()},
        )
        if self.saves == self.kill_after_save:
            kill_self()

    def _claimed(self, records: builtins.list[SagaRecord]) -> None:
        for record in records:
            self.claimed.append(record.saga_id)
            self._note(
                "claim",
                record.saga_id,
                v=record.version,
                previous=record.previous_owner,
                attempts=record.recovery_attempts,
            )


def open_store(kind: str, target: str, table: str) -> SagaStore:
    """A new store instance on the shared database (its own connection or pool)."""
    if kind == "sqlite":
        from lexigram.events.sagas.sqlite import SQLiteSagaStore

        return SQLiteSagaStore(target, table=table)
    if kind == "postgres":
        from lexigram.events.sagas.postgres import PostgresSagaStore

        return PostgresSagaStore(target, table=table, max_size=4)
    raise ValueError(f"unknown store kind {kind!r}")


async def has_live_sagas(store: SagaStore) -> bool:
    """Whether any saga in the store is not terminal yet."""
    for status in LIVE_STATUSES:
        if await store.list(status=status, limit=1):
            return True
    return False


async def recover_until(
    manager: SagaManager,
    store: SagaStore,
    *,
    expect: int | None,
    until_idle: bool,
    timeout: float,
    pause: float = 0.02,
) -> int:
    """Call ``recover()`` until enough sagas were resumed (or none is left), then wait.

    Returns how many sagas this manager resumed. Waits until the sagas it resumed stopped
    running here.

    Raises:
        TimeoutError: the goal was not reached within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    total = 0
    while True:
        total += await manager.recover()
        if expect is not None and total >= expect:
            break
        if until_idle and not manager.running() and not await has_live_sagas(store):
            break
        if expect is None and not until_idle:
            break
        if loop.time() > deadline:
            raise TimeoutError(f"recover loop of {manager.worker_id} timed out ({total} resumed)")
        await asyncio.sleep(pause)
    while manager.running():
        if loop.time() > deadline:
            raise TimeoutError(f"sagas of {manager.worker_id} still running: {manager.running()}")
        await asyncio.sleep(pause)
    return total


# ---------------------------------------------------------------------- command line


def _config(args: argparse.Namespace, lease: float) -> SagaConfig:
    options: dict[str, Any] = {
        "lease_seconds": lease,
        "retry_delay_seconds": 0.0,
        "shutdown_timeout": 5.0,
    }
    if args.max_recovery_attempts is not None:
        options["max_recovery_attempts"] = args.max_recovery_attempts
    return SagaConfig(**options)


def _probe(args: argparse.Namespace, log: SideEffectLog) -> Probe:
    return Probe(
        log=log,
        kill_in=frozenset(args.kill_in),
        hang_from_data=getattr(args, "hang_from_data", False),
        kill_when_hanging=getattr(args, "kill_when_hanging", 1),
        block_in=args.block_in,
        release=None if args.release is None else Path(args.release),
        block_loop=args.block_loop,
        delay=args.delay,
    )


async def run_command(args: argparse.Namespace) -> dict[str, Any]:
    """Start the sagas, wait for them (unless the process is killed first)."""
    log = SideEffectLog(args.log, worker=args.worker)
    store = InstrumentedStore(
        open_store(args.store, args.target, args.table), log, kill_after_save=args.kill_after_save
    )
    probe = _probe(args, log)
    managers: list[SagaManager] = []
    for group in range(args.groups):
        # Different lease lengths, so a dead worker's groups become claimable one by one.
        lease = args.lease * (1 + group / args.groups)
        worker = args.worker if args.groups == 1 else f"{args.worker}-g{group}"
        manager = SagaManager(store, config=_config(args, lease), worker_id=worker)
        manager.register(CrashSaga, factory=lambda: CrashSaga(probe))
        managers.append(manager)
    sagas: list[tuple[str, dict[str, Any]]] = [(s, d) for s, d in json.loads(args.sagas)]
    owner: dict[str, SagaManager] = {}
    for index, (saga_id, data) in enumerate(sagas):
        manager = managers[index % len(managers)]
        await manager.start(SAGA_NAME, data, saga_id=saga_id)
        owner[saga_id] = manager
    records = await asyncio.gather(
        *(owner[saga_id].wait(saga_id, timeout=args.timeout) for saga_id, _ in sagas)
    )
    for manager in managers:
        await manager.close()
    await store.close()
    log.close()
    return {
        "worker": args.worker,
        "statuses": {record.saga_id: record.status.value for record in records},
        "versions": {record.saga_id: record.version for record in records},
    }


async def recover_command(args: argparse.Namespace) -> dict[str, Any]:
    """Recover what others left behind, as one worker."""
    log = SideEffectLog(args.log, worker=args.worker)
    store = InstrumentedStore(
        open_store(args.store, args.target, args.table), log, kill_after_save=args.kill_after_save
    )
    probe = _probe(args, log)
    manager = SagaManager(store, config=_config(args, args.lease), worker_id=args.worker)
    manager.register(CrashSaga, factory=lambda: CrashSaga(probe))
    if args.ready:
        await store.load("warm-up")  # connect (and create the schema) before the race
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    resumed = await recover_until(
        manager, store, expect=args.expect, until_idle=args.until_idle, timeout=args.timeout
    )
    problems = [problem.reason for problem in manager.recovery_problems]
    await manager.close()
    await store.close()
    log.close()
    return {
        "worker": args.worker,
        "resumed": resumed,
        "claimed": store.claimed,
        "problems": problems,
    }


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    recover = commands.add_parser("recover")
    for sub in (run, recover):
        sub.add_argument("--store", choices=("sqlite", "postgres"), required=True)
        sub.add_argument("--target", required=True, help="SQLite file or PostgreSQL DSN")
        sub.add_argument("--table", default="lexigram_sagas")
        sub.add_argument("--worker", required=True)
        sub.add_argument("--log", required=True, help="the side-effect log file")
        sub.add_argument("--lease", type=float, default=1.0)
        sub.add_argument("--max-recovery-attempts", type=int, default=None)
        sub.add_argument("--kill-in", action="append", default=[], metavar="POINT")
        sub.add_argument("--kill-after-save", type=int, default=None, metavar="N")
        sub.add_argument("--block-in", default=None, metavar="POINT")
        sub.add_argument("--release", default=None, metavar="FILE")
        sub.add_argument("--block-loop", action="store_true")
        sub.add_argument("--delay", type=float, default=0.0)
        sub.add_argument("--timeout", type=float, default=120.0)
    run.add_argument("--sagas", required=True, help='JSON: [["saga-id", {data}], ...]')
    run.add_argument("--groups", type=int, default=1)
    run.add_argument("--hang-from-data", action="store_true")
    run.add_argument("--kill-when-hanging", type=int, default=1, metavar="N")
    recover.add_argument("--expect", type=int, default=None, metavar="N")
    recover.add_argument("--until-idle", action="store_true")
    recover.add_argument("--ready", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    """Run one command and print its JSON summary as the last line of stdout."""
    args = parse(argv)
    command = run_command if args.command == "run" else recover_command
    summary = asyncio.run(command(args))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
