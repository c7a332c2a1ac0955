"""The service layer across real processes, on SQLite and PostgreSQL (SPEC section 11).

A client in the test process enqueues and cancels; workers are separate processes running
``serve()`` (``tests/support/service_worker.py``), one of them killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas import SagaManager, SagaStatus
from tests.support.crash_support import Target
from tests.support.service_worker import ServiceSaga

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


class ServiceWorkers:
    """``service_worker.py`` processes sharing one log; none outlives the test."""

    def __init__(self, target: Target, log: Path) -> None:
        self.target = target
        self.log = log
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, worker_id: str, *, lease: float = 3.0) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.service_worker",
            *self.target.cli(),
            "--log",
            str(self.log),
            "--worker-id",
            worker_id,
            "--lease",
            str(lease),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": f"{ROOT}/src:{ROOT}"},
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=WAIT)
        assert line.strip() == b"ready", line
        return proc

    def events(self, saga_id: str) -> list[tuple[str, str]]:
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)
            if entry["saga"] == saga_id:
                found.append((entry["worker"], entry["event"]))
        return found

    async def wait_for(self, saga_id: str, event: str) -> str:
        """Wait until some worker logged ``event`` for the saga; return that worker."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for worker, seen in self.events(saga_id):
                if seen == event:
                    return worker
            await asyncio.sleep(0.02)
        raise AssertionError(f"{event!r} never logged for {saga_id}: {self.events(saga_id)}")

    async def close(self) -> None:
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


@pytest.fixture
async def service(target: Target, tmp_path: Path) -> AsyncIterator[ServiceWorkers]:
    workers = ServiceWorkers(target, tmp_path / "effects.log")
    try:
        yield workers
    finally:
        await workers.close()


@contextlib.asynccontextmanager
async def client_of(target: Target) -> AsyncIterator[SagaManager]:
    """A client manager in the test process: it enqueues and cancels, never serves."""
    store = target.open()
    client = SagaManager(store=store)
    client.register(ServiceSaga)
    try:
        yield client
    finally:
        await client.close()
        await store.close()


async def test_a_worker_process_runs_what_a_client_enqueued(service: ServiceWorkers) -> None:
    """Enqueued in one process, picked up and completed by a worker in another."""
    await service.start("w1")
    async with client_of(service.target) as client:
        ids = [await client.enqueue("svc", {"n": n}) for n in range(10)]
        records = [await client.wait(saga_id, timeout=WAIT) for saga_id in ids]
    assert {r.status for r in records} == {SagaStatus.COMPLETED}
    for saga_id in ids:
        assert [event for _, event in service.events(saga_id)] == ["a", "b entered", "b done", "c"]


async def test_cancel_from_another_process_stops_the_running_step(
    service: ServiceWorkers,
) -> None:
    """The client stores the request; the worker stops step ``b`` and compensates ``a``."""
    await service.start("w1")
    async with client_of(service.target) as client:
        saga_id = await client.enqueue("svc", {"hold": 60})
        await service.wait_for(saga_id, "b entered")
        asked = await client.cancel(saga_id, reason="customer changed their mind")
        assert not asked.is_terminal
        assert asked.cancel_reason == "customer changed their mind"
        record = await client.wait(saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert record.failure.kind == "cancelled"
    assert "customer changed their mind" in (record.error or "")
    events = [event for _, event in service.events(saga_id)]
    assert events == ["a", "b entered", "undo a"]  # b never finished, c never ran


async def test_a_cancel_request_survives_its_workers_death(service: ServiceWorkers) -> None:
    """Requested while the holder is dead: the next worker compensates instead of going on."""
    doomed = await service.start("doomed", lease=2.0)
    async with client_of(service.target) as client:
        saga_id = await client.enqueue("svc", {"hold": 60})
        await service.wait_for(saga_id, "b entered")
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        asked = await client.cancel(saga_id, reason="abandoned")
        assert asked.lease_owner == "doomed"  # still under the dead worker's lease
        await service.start("heir", lease=2.0)
        record = await client.wait(saga_id, timeout=WAIT)
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert record.failure.kind == "cancelled"
    assert ("heir", "undo a") in service.events(saga_id)
    assert ("heir", "b entered") not in service.events(saga_id)  # not run again


async def test_two_workers_share_the_queue_and_survive_a_kill(service: ServiceWorkers) -> None:
    """With one of two workers killed mid-flight, every saga still completes.

    A step the victim had in flight runs again in the survivor (at least once); no saga
    runs a step more than once per worker.
    """
    victim = await service.start("victim", lease=2.0)
    await service.start("survivor", lease=2.0)
    async with client_of(service.target) as client:
        ids = [await client.enqueue("svc", {"hold": 0.3}) for _ in range(30)]
        deadline = time.monotonic() + WAIT
        while not any(
            w == "victim" and e == "b entered" for i in ids for w, e in service.events(i)
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        records = [await client.wait(saga_id, timeout=WAIT) for saga_id in ids]
    assert {r.status for r in records} == {SagaStatus.COMPLETED}
    for saga_id in ids:
        seen = service.events(saga_id)
        assert ("victim", "c") in seen or ("survivor", "c") in seen, (saga_id, seen)
        assert len(seen) == len(set(seen)), (saga_id, seen)
