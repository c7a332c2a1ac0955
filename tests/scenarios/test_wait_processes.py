"""Durable waits across real processes, on SQLite and PostgreSQL (SPEC section 11).

Workers are separate processes running ``serve()`` (``tests/support/wait_worker.py``); the
test process is a client that enqueues and signals and never serves. Workers are killed
with SIGKILL while every saga is parked, while they race for signalled sagas, and inside
the step that took a signal. Each step logs every run to a shared file, so the tests count
how often each step body ran, in which process, with which signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas import SagaManager, SagaRecord, SagaStatus
from tests.support.crash_support import Target
from tests.support.wait_worker import SAGA_NAME, SIGNAL, WaitSaga

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


class WaitWorkers:
    """``wait_worker.py`` processes sharing one log; none outlives the test."""

    def __init__(self, target: Target, tmp_path: Path) -> None:
        self.target = target
        self.tmp_path = tmp_path
        self.log = tmp_path / "effects.log"
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(
        self,
        worker_id: str,
        *,
        lease: float = 3.0,
        hold: float = 0.0,
        poll: float = 0.1,
        concurrency: int = 50,
    ) -> asyncio.subprocess.Process:
        """Start a serving worker and wait until it says it is ready."""
        stderr = (self.tmp_path / f"{worker_id}.stderr").open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.wait_worker",
                *self.target.cli(),
                "--log",
                str(self.log),
                "--worker-id",
                worker_id,
                "--lease",
                str(lease),
                "--hold",
                str(hold),
                "--poll",
                str(poll),
                "--concurrency",
                str(concurrency),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONPATH": f"{ROOT}/src:{ROOT}"},
            )
        finally:
            stderr.close()  # the child has its own copy
        self.procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=WAIT)
        assert line.strip() == b"ready", (line, self.stderr(worker_id))
        return proc

    def stderr(self, worker_id: str) -> str:
        """What a worker wrote to stderr (for failure messages)."""
        path = self.tmp_path / f"{worker_id}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnosis(self) -> str:
        """The tail of every worker's stderr, for a failure message."""
        return "\n".join(
            f"--- {path.stem} stderr:\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.tmp_path.glob("*.stderr"))
        )

    async def kill(self, *procs: asyncio.subprocess.Process) -> None:
        """SIGKILL the given workers and reap them."""
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            assert await proc.wait() == -signal.SIGKILL

    def entries(self) -> list[dict[str, Any]]:
        """Every logged step run, in the order they were appended."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def runs(self, saga_id: str, event: str) -> list[tuple[str, Any]]:
        """``(worker, ctx.signal)`` of every logged ``event`` of the saga."""
        return [
            (entry["worker"], entry["signal"])
            for entry in self.entries()
            if entry["saga"] == saga_id and entry["event"] == event
        ]

    async def wait_for(self, saga_id: str, event: str) -> str:
        """Wait until some worker logged ``event`` for the saga; return that worker."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = self.runs(saga_id, event)
            if found:
                return found[0][0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{event!r} never logged for {saga_id}\n{self.diagnosis()}")

    async def close(self) -> None:
        """Stop every worker still running (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def drop_signals_table(target: Target) -> None:
    """Drop a PostgreSQL test table's signals table (the shared target drops the others)."""
    if target.kind != "postgres":
        return
    import asyncpg

    conn = await asyncpg.connect(target.location)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{target.table}_signals"')
    finally:
        await conn.close()


@pytest.fixture
async def waiters(target: Target, tmp_path: Path) -> AsyncIterator[WaitWorkers]:
    workers = WaitWorkers(target, tmp_path)
    try:
        yield workers
    finally:
        await workers.close()
        await drop_signals_table(target)


@contextlib.asynccontextmanager
async def client_of(target: Target) -> AsyncIterator[SagaManager]:
    """A client manager in the test process: it enqueues and signals, never serves."""
    store = target.open()
    client = SagaManager(store=store)
    client.register(WaitSaga)
    try:
        yield client
    finally:
        await client.close()
        await store.close()


async def all_parked(client: SagaManager, ids: list[str], workers: WaitWorkers) -> list[SagaRecord]:
    """Wait until every saga of ``ids`` is stored parked at ``approve`` and held by no one."""
    deadline = time.monotonic() + WAIT
    wanted = set(ids)
    while True:
        parked = await client.list(saga_name=SAGA_NAME, waiting=True, limit=1000)
        free = [r for r in parked if r.saga_id in wanted and r.lease_owner is None]
        if len(free) == len(wanted):
            return free
        assert time.monotonic() < deadline, (
            f"{len(free)} of {len(wanted)} sagas parked\n{workers.diagnosis()}"
        )
        await asyncio.sleep(0.05)


async def finish_all(client: SagaManager, ids: list[str], workers: WaitWorkers) -> list[SagaRecord]:
    """Wait for every saga of ``ids`` to end."""
    try:
        return list(await asyncio.gather(*(client.wait(i, timeout=WAIT) for i in ids)))
    except TimeoutError:
        late = [r for i in ids if (r := await client.get(i)) is not None and not r.is_terminal]
        raise AssertionError(
            f"{len(late)} sagas did not end, e.g. {late[:1]}\n{workers.diagnosis()}"
        ) from None


async def test_parked_sagas_survive_killing_every_worker(waiters: WaitWorkers) -> None:
    """All workers SIGKILLed while 20 sagas are parked: new workers finish each once.

    Each step body runs exactly once per saga (the park was durable, nothing was in
    flight), and the waiting step runs with its own saga's signal payload.
    """
    first = [await waiters.start("w1"), await waiters.start("w2")]
    async with client_of(waiters.target) as client:
        ids = [await client.enqueue(SAGA_NAME, {"n": n}, f"park-{n}") for n in range(20)]
        parked = await all_parked(client, ids, waiters)
        assert {
            (r.waiting.step, r.waiting.kind, r.waiting.signal) for r in parked if r.waiting
        } == {("approve", "signal", SIGNAL)}
        assert all(r.status is SagaStatus.RUNNING for r in parked)
        await waiters.kill(*first)
        still = await client.list(waiting=True, limit=1000)
        assert sorted(r.saga_id for r in still) == sorted(ids)  # the kills changed nothing
        assert all(r.lease_owner is None for r in still)
        await waiters.start("w3")
        await waiters.start("w4")
        for n, saga_id in enumerate(ids):
            assert await client.signal(saga_id, SIGNAL, {"n": n}, signal_id=f"sig-{n}")
        records = await finish_all(client, ids, waiters)
    assert {r.status for r in records} == {SagaStatus.COMPLETED}
    for n, (saga_id, record) in enumerate(zip(ids, records, strict=True)):
        assert record.waiting is None
        assert record.steps["approve"].output == {"approved": n}
        assert record.steps["approve"].signal_seq == 1
        assert [w for w, _ in waiters.runs(saga_id, "prepare")] in (["w1"], ["w2"])
        approvals = waiters.runs(saga_id, "approve entered")
        assert len(approvals) == 1, (saga_id, approvals)
        assert approvals[0][0] in ("w3", "w4")
        assert approvals[0][1] == {"n": n}
        assert len(waiters.runs(saga_id, "approve done")) == 1
        assert len(waiters.runs(saga_id, "finish")) == 1
        assert waiters.runs(saga_id, "undo prepare") == []


async def test_two_workers_racing_for_signalled_sagas_run_each_wait_once(
    waiters: WaitWorkers,
) -> None:
    """30 parked sagas signalled at once, two eager workers: each waiting step runs once.

    Each worker runs at most 5 sagas at a time and its waiting step takes 50 ms, so both
    keep claiming from the same set of due sagas while the other does.
    """
    await waiters.start("left", poll=0.02, hold=0.05, concurrency=5)
    await waiters.start("right", poll=0.02, hold=0.05, concurrency=5)
    async with client_of(waiters.target) as client:
        ids = [await client.enqueue(SAGA_NAME, {}, f"race-{n}") for n in range(30)]
        await all_parked(client, ids, waiters)
        sent = await asyncio.gather(
            *(
                client.signal(saga_id, SIGNAL, {"n": n}, signal_id=f"sig-{n}")
                for n, saga_id in enumerate(ids)
            )
        )
        assert all(sent)
        records = await finish_all(client, ids, waiters)
    assert {r.status for r in records} == {SagaStatus.COMPLETED}
    runners: Counter[str] = Counter()
    for n, saga_id in enumerate(ids):
        approvals = waiters.runs(saga_id, "approve entered")
        assert len(approvals) == 1, (saga_id, approvals)
        assert approvals[0][1] == {"n": n}
        runners[approvals[0][0]] += 1
        for event in ("prepare", "approve done", "finish"):
            assert len(waiters.runs(saga_id, event)) == 1, (saga_id, event)
    assert set(runners) == {"left", "right"}, runners  # they did compete


async def test_signals_racing_the_park_are_never_lost(waiters: WaitWorkers) -> None:
    """Each saga is signalled right after it is enqueued, while a worker runs or parks it.

    A signal may land before the saga waits, while a worker holds it, or just as it parks:
    in every case the waiting step takes it (no saga stays parked with its signal stored)
    and runs once.
    """
    await waiters.start("left", poll=0.05)
    await waiters.start("right", poll=0.05)
    async with client_of(waiters.target) as client:
        ids = []
        for n in range(30):
            saga_id = await client.enqueue(SAGA_NAME, {}, f"early-{n}")
            ids.append(saga_id)
            if n:  # the previous saga is being run or parked by now, or soon
                assert await client.signal(ids[-2], SIGNAL, {"n": n - 1}, signal_id="only")
        assert await client.signal(ids[-1], SIGNAL, {"n": 29}, signal_id="only")
        records = await finish_all(client, ids, waiters)
    assert {r.status for r in records} == {SagaStatus.COMPLETED}
    for n, saga_id in enumerate(ids):
        approvals = waiters.runs(saga_id, "approve entered")
        assert [payload for _, payload in approvals] == [{"n": n}], (saga_id, approvals)
        assert len(waiters.runs(saga_id, "finish")) == 1, saga_id


async def test_a_worker_killed_in_the_waiting_step_is_replaced_with_the_same_signal(
    waiters: WaitWorkers,
) -> None:
    """Killed inside the step that took signal 1: the heir runs it again with signal 1.

    A second signal sent after the kill stays unconsumed: a visit keeps the signal it took
    (the same ``signal_seq``), across the crash and the takeover.
    """
    doomed = await waiters.start("doomed", lease=2.0, hold=60.0)
    async with client_of(waiters.target) as client:
        saga_id = await client.enqueue(SAGA_NAME, {}, "killed-in-wait")
        await all_parked(client, [saga_id], waiters)
        assert await client.signal(saga_id, SIGNAL, {"n": 1}, signal_id="first")
        assert await waiters.wait_for(saga_id, "approve entered") == "doomed"
        await waiters.kill(doomed)
        assert await client.signal(saga_id, SIGNAL, {"n": 2}, signal_id="second")
        held = await client.get(saga_id)
        assert held is not None
        assert held.lease_owner == "doomed"  # still under the dead worker's lease
        await waiters.start("heir", lease=2.0)
        (record,) = await finish_all(client, [saga_id], waiters)
        unconsumed = await client.store.next_signal(saga_id, SIGNAL, 1)
    assert record.status is SagaStatus.COMPLETED
    assert record.steps["approve"].signal_seq == 1
    assert record.steps["approve"].output == {"approved": 1}
    assert record.previous_owner == "doomed"
    assert waiters.runs(saga_id, "approve entered") == [("doomed", {"n": 1}), ("heir", {"n": 1})]
    assert waiters.runs(saga_id, "approve done") == [("heir", {"n": 1})]
    assert waiters.runs(saga_id, "finish") == [("heir", None)]
    assert waiters.runs(saga_id, "prepare") == [("doomed", None)]
    assert unconsumed is not None
    assert (unconsumed.seq, unconsumed.payload) == (2, {"n": 2})
