"""Test-side helpers of the crash, race and restart tests (see ``tests/support/crash_worker.py``).

- :class:`Target`: which database the worker processes share (an SQLite file, or a
  PostgreSQL table of its own), and how to open another store on it;
- :class:`Workers`: starts ``crash_worker.py`` processes and makes sure none outlives
  its test;
- the side-effect log readers, and the oracles checked on it: which points each saga
  entered, in which order, in which process; which writes landed, with which version;
- :func:`reference_run`: the same saga run uninterrupted in memory, the outcome every
  crashed and recovered saga must reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lexigram.events.sagas import (
    InMemorySagaStore,
    SagaConfig,
    SagaManager,
    SagaRecord,
    SagaStore,
)
from tests.support.crash_worker import SAGA_NAME, CrashSaga, Probe, open_store

WORKER_SCRIPT = Path(__file__).with_name("crash_worker.py")
TERMINAL_VALUES = frozenset({"completed", "compensated", "failed"})
PROCESS_TIMEOUT = 90.0


# ---------------------------------------------------------------------- the database


@dataclass(frozen=True)
class Target:
    """The database worker processes share: an SQLite file or a PostgreSQL table."""

    kind: str
    location: str
    table: str = "lexigram_sagas"

    def cli(self) -> list[str]:
        """The ``crash_worker.py`` options naming this database."""
        return ["--store", self.kind, "--target", self.location, "--table", self.table]

    def open(self) -> SagaStore:
        """A new store instance on this database (its own thread or pool)."""
        return open_store(self.kind, self.location, self.table)

    async def load(self, saga_id: str) -> SagaRecord:
        """Read one saga through a fresh store instance."""
        store = self.open()
        try:
            record = await store.load(saga_id)
        finally:
            await store.close()
        assert record is not None, f"saga {saga_id} is not in the store"
        return record

    async def load_all(self, saga_ids: Iterable[str]) -> dict[str, SagaRecord]:
        """Read several sagas through one fresh store instance."""
        store = self.open()
        found: dict[str, SagaRecord] = {}
        try:
            for saga_id in saga_ids:
                record = await store.load(saga_id)
                assert record is not None, f"saga {saga_id} is not in the store"
                found[saga_id] = record
        finally:
            await store.close()
        return found


def pg_table() -> str:
    """A table name no other test uses."""
    return f"crash_{uuid.uuid4().hex[:12]}"


async def drop_pg_table(dsn: str, table: str) -> None:
    """Drop a test's saga table and its meta table (the server must be up)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_meta", "{table}_signals"')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def make_target(kind: str, tmp_path: Path, dsn: str | None) -> AsyncIterator[Target]:
    """A fresh database of ``kind``, dropped afterwards (PostgreSQL)."""
    if kind == "sqlite":
        yield Target("sqlite", str(tmp_path / "sagas.db"))
        return
    assert dsn is not None
    target = Target("postgres", dsn, pg_table())
    try:
        yield target
    finally:
        await drop_pg_table(dsn, target.table)


# ---------------------------------------------------------------------- processes


@dataclass
class Finished:
    """How a worker process ended."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        """Whether the process died of SIGKILL."""
        return self.returncode == -signal.SIGKILL

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON summary the worker printed last."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no summary; stderr:\n{self.stderr}"
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary

    def describe(self) -> str:
        """What to show when the exit was not the expected one."""
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@dataclass
class Workers:
    """Starts ``crash_worker.py`` processes; :meth:`close` kills any still running."""

    log: Path
    started: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(
        self, command: str, target: Target, *options: str
    ) -> asyncio.subprocess.Process:
        """Start ``crash_worker.py COMMAND`` on ``target``, logging to the shared log."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER_SCRIPT),
            command,
            *target.cli(),
            "--log",
            str(self.log),
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.started.append(proc)
        return proc

    async def run(
        self, command: str, target: Target, *options: str, timeout: float = PROCESS_TIMEOUT
    ) -> Finished:
        """Start a worker and wait for its end."""
        return await self.finish(await self.start(command, target, *options), timeout=timeout)

    async def finish(
        self, proc: asyncio.subprocess.Process, *, timeout: float = PROCESS_TIMEOUT
    ) -> Finished:
        """Wait for a worker's end (killing it after ``timeout`` seconds)."""
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(
                f"worker pid {proc.pid} did not end within {timeout}s\n{err.decode()}"
            ) from None
        assert proc.returncode is not None
        return Finished(proc.returncode, out.decode(), err.decode())

    async def wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Wait until a ``recover --ready`` worker says it is ready."""
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), PROCESS_TIMEOUT)
        assert line == b"ready\n", line

    async def close(self) -> None:
        """Kill and reap every worker still running (only the ones this object started)."""
        for proc in self.started:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.communicate(), 30)


# ---------------------------------------------------------------------- the side-effect log


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every entry of the side-effect log, in the order they were appended."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def wait_for_log(
    path: Path,
    predicate: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = PROCESS_TIMEOUT,
    what: str = "a log entry",
) -> list[dict[str, Any]]:
    """Poll the log until ``predicate`` holds; return the entries."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        entries = read_log(path)
        if predicate(entries):
            return entries
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; log has {len(entries)} entries")
        await asyncio.sleep(0.02)


def calls(entries: Iterable[Mapping[str, Any]], saga: str) -> list[str]:
    """The points (``step:2``...) the saga entered, in order, across all processes."""
    return [e["point"] for e in entries if e["kind"] == "call" and e["saga"] == saga]


def calls_by(entries: Iterable[Mapping[str, Any]], saga: str, worker: str) -> list[str]:
    """The points the saga entered in one worker."""
    return [
        e["point"]
        for e in entries
        if e["kind"] == "call" and e["saga"] == saga and e["w"] == worker
    ]


def entries_of(
    entries: Iterable[Mapping[str, Any]], saga: str, *kinds: str
) -> list[dict[str, Any]]:
    """The saga's entries of the given kinds, in order."""
    return [dict(e) for e in entries if e["saga"] == saga and e["kind"] in kinds]


def check_writes(entries: list[dict[str, Any]], saga: str, final: SagaRecord) -> None:
    """Inv. 6 / N4 / N6 from the log: every write landed with the next version, one outcome.

    The versions of the saga's logged writes (saves and claims) are exactly
    ``1..final.version`` (releases, if any, fill their gaps); exactly one save wrote a
    terminal status, and it was the last write; after each claim, only the claimer wrote.
    """
    writes = entries_of(entries, saga, "save", "claim")
    releases = [e for e in entries_of(entries, saga, "release") if e["held"]]
    versions = [e["v"] for e in writes]
    assert len(versions) == len(set(versions)), f"{saga}: a version was written twice: {versions}"
    assert len(versions) + len(releases) == final.version, (
        f"{saga}: {len(versions)} writes and {len(releases)} releases logged, "
        f"final version {final.version}"
    )
    if not releases:
        assert versions == list(range(1, final.version + 1)), f"{saga}: versions {versions}"
    terminal = [e for e in writes if e["kind"] == "save" and e["status"] in TERMINAL_VALUES]
    if final.is_terminal:
        assert len(terminal) == 1, f"{saga}: terminal status written {len(terminal)} times"
        assert terminal[0] is writes[-1], f"{saga}: a write followed the terminal one"
        assert terminal[0]["status"] == final.status.value
    owner: str | None = None
    for entry in writes:
        if entry["kind"] == "claim":
            owner = entry["w"]
        elif owner is not None:
            assert entry["w"] == owner, f"{saga}: {entry['w']} wrote after {owner} claimed it"


def check_durable_before_start(entries: list[dict[str, Any]], saga: str) -> None:
    """Inv. 1 from the log: a step starts only once the previous step's completion landed.

    Likewise a compensation starts only once the saga's compensating status landed, and
    compensation ``n`` only once no later step is left to compensate in the store (the
    compensations of later-completed steps landed first: reverse completion order).
    """
    steps: dict[str, str] = {}
    status = ""
    for entry in entries_of(entries, saga, "save", "call"):
        if entry["kind"] == "save":
            steps, status = entry["steps"], entry["status"]
            continue
        kind, number = entry["point"].split(":")
        n = int(number)
        if kind == "step" and n > 1:
            assert steps.get(f"s{n - 1}") == "completed", (
                f"{saga}: {entry['point']} started while s{n - 1} was {steps.get(f's{n - 1}')}"
                " in the store"
            )
        if kind == "compensation":
            assert status == "compensating", (
                f"{saga}: {entry['point']} started while the stored saga was {status!r}"
            )
            assert steps.get(f"s{n}") == "completed", f"{saga}: {entry['point']} of {steps}"
            pending = [
                name
                for name, value in steps.items()
                if int(name[1:]) > n and value in ("completed", "compensating")
            ]
            assert not pending, f"{saga}: {entry['point']} started before {pending} compensated"


# ---------------------------------------------------------------------- expected outcomes


@dataclass
class Reference:
    """An uninterrupted run of the same saga: its record and the points it entered."""

    record: SagaRecord
    points: list[str]


async def reference_run(saga_id: str, data: Mapping[str, Any]) -> Reference:
    """Run the saga uninterrupted on an in-memory store; what a recovered run must reach."""
    probe = Probe()
    manager = SagaManager(
        InMemorySagaStore(), config=SagaConfig(retry_delay_seconds=0.0), worker_id="reference"
    )
    manager.register(CrashSaga, factory=lambda: CrashSaga(probe))
    try:
        record = await manager.execute(SAGA_NAME, dict(data), saga_id=saga_id, timeout=30)
    finally:
        await manager.close()
    return Reference(record, [point for _, point in probe.calls])


def outcome(record: SagaRecord) -> dict[str, Any]:
    """What must be equal between a recovered run and an uninterrupted one (N1, N5)."""
    return {
        "status": record.status.value,
        "error": record.error,
        "data": record.data,
        "metadata": record.metadata,
        "current_step": record.current_step,
        "steps": {
            name: {
                "status": step.status.value,
                "output": step.output,
                "error": step.error,
                "attempts": step.attempts,
                "compensation_attempts": step.compensation_attempts,
                "compensation_error": step.compensation_error,
                "completion_seq": step.completion_seq,
                "visits": step.visits,
            }
            for name, step in record.steps.items()
        },
    }


def sample_data(index: int, *, fail: bool, **extra: Any) -> dict[str, Any]:
    """The data a test saga starts with: JSON that must come back exactly (N5)."""
    return {
        "order": f"ord-{index}-\u00e9\u4e2d",
        "amount": 12.5 + index,
        "items": [{"sku": f"sku-{k}", "qty": k} for k in range(3)],
        "fail": fail,
        "huge": 10**30 + index,
        **extra,
    }


__all__ = [
    "PROCESS_TIMEOUT",
    "WORKER_SCRIPT",
    "Finished",
    "Reference",
    "Target",
    "Workers",
    "calls",
    "calls_by",
    "check_durable_before_start",
    "check_writes",
    "drop_pg_table",
    "entries_of",
    "make_target",
    "outcome",
    "pg_table",
    "read_log",
    "reference_run",
    "sample_data",
    "wait_for_log",
]
