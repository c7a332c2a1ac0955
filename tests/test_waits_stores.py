"""Durable waits on the durable stores: SQLite and PostgreSQL, a worker and a client.

The engine's side of waits is tested on the in-memory store (``tests/test_waits.py``);
here the same behaviours run on each durable store, with the worker and the client on
store instances of their own (as separate processes have) and real, short timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lexigram.events.sagas import (
    SagaBase,
    SagaConfig,
    SagaContext,
    SagaFinishedError,
    SagaManager,
    SagaStatus,
    SagaStepResult,
    SagaStore,
    saga_step,
)
from tests.support.crash_support import Target

CONFIG = SagaConfig(retry_delay_seconds=0, shutdown_timeout=2, default_timeout_seconds=120)


class Calls:
    """Step bodies run, in order, with what the waiting step saw."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.signals: list[Any] = []


def approval(calls: Calls, *, wait_timeout: float | None = None) -> type[SagaBase]:
    class Approval(SagaBase):
        name = "approval"

        @saga_step("submit")
        async def submit(self, ctx: SagaContext) -> None:
            calls.log.append("submit")

        @saga_step("submit", compensation=True)
        async def undo_submit(self, ctx: SagaContext) -> None:
            calls.log.append("undo submit")

        @saga_step("approve", wait_for="approval", wait_timeout=wait_timeout)
        async def approve(self, ctx: SagaContext) -> None:
            calls.log.append("approve")
            calls.signals.append(ctx.signal)

        @saga_step("pay", delay=0.2)
        async def pay(self, ctx: SagaContext) -> SagaStepResult:
            ctx["polls"] = ctx.get("polls", 0) + 1
            if ctx["polls"] < 3:
                return SagaStepResult.retry_after(0.05)
            calls.log.append("pay")
            return SagaStepResult.Ok()

    return Approval


@contextlib.asynccontextmanager
async def worker_and_client(
    target: Target, saga: type[SagaBase]
) -> AsyncIterator[tuple[SagaManager, SagaManager]]:
    """A serving worker and a client, each on a store instance of its own."""
    stores: list[SagaStore] = [target.open(), target.open()]
    worker = SagaManager(stores[0], config=CONFIG, worker_id="worker")
    client = SagaManager(stores[1], config=CONFIG, worker_id="client")
    worker.register(saga)
    client.register(saga)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop=stop, poll_interval=0.05))
    try:
        yield worker, client
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=10)
        for manager in (worker, client):
            await manager.close()
        for store in stores:
            await store.close()


async def until_parked(client: SagaManager, saga_id: str) -> Any:
    async with asyncio.timeout(10):
        while True:
            record = await client.get(saga_id)
            if record is not None and record.waiting is not None and record.lease_owner is None:
                return record
            await asyncio.sleep(0.01)


async def test_a_client_signal_resumes_a_parked_saga(target: Target) -> None:
    """Parked on the store, listed as waiting; a client's signal completes it."""
    calls = Calls()
    async with worker_and_client(target, approval(calls, wait_timeout=60)) as (_, client):
        saga_id = await client.enqueue("approval", {"n": 1})
        parked = await until_parked(client, saga_id)
        assert (parked.status, parked.waiting.signal) == (SagaStatus.RUNNING, "approval")
        assert [r.saga_id for r in await client.list(waiting=True)] == [saga_id]
        assert await client.signal(saga_id, "approval", {"ok": True}, signal_id="s1")
        assert not await client.signal(saga_id, "approval", {"ok": True}, signal_id="s1")
        final = await client.wait(saga_id, timeout=20)
    assert final.status is SagaStatus.COMPLETED
    assert calls.log == ["submit", "approve", "pay"]
    assert calls.signals == [{"ok": True}]
    assert final.data["polls"] == 3  # the delayed step polled twice, then completed
    assert final.waiting is None


async def test_a_signal_sent_before_the_wait_is_taken(target: Target) -> None:
    """A signal stored before any worker ran the saga is taken without parking."""
    calls = Calls()
    async with worker_and_client(target, approval(calls)) as (_, client):
        saga_id = await client.enqueue("approval", {}, not_before=None)
        await client.signal(saga_id, "approval", {"early": True})
        final = await client.wait(saga_id, timeout=20)
    assert final.status is SagaStatus.COMPLETED
    assert calls.signals == [{"early": True}]


async def test_a_wait_timeout_compensates_and_later_signals_are_refused(target: Target) -> None:
    """No signal in time: ``kind="timeout"``, compensated; then the saga takes no signal."""
    calls = Calls()
    async with worker_and_client(target, approval(calls, wait_timeout=0.3)) as (_, client):
        saga_id = await client.enqueue("approval", {})
        final = await client.wait(saga_id, timeout=20)
        assert final.status is SagaStatus.COMPENSATED
        assert final.failure is not None
        assert (final.failure.kind, final.failure.step) == ("timeout", "approve")
        with pytest.raises(SagaFinishedError):
            await client.signal(saga_id, "approval", {})
    assert calls.log == ["submit", "undo submit"]


async def test_a_client_cancels_a_parked_saga(target: Target) -> None:
    """A cancel request from the client reaches the parked saga; the worker compensates."""
    calls = Calls()
    async with worker_and_client(target, approval(calls)) as (_, client):
        saga_id = await client.enqueue("approval", {})
        await until_parked(client, saga_id)
        await client.cancel(saga_id, reason="withdrawn")
        final = await client.wait(saga_id, timeout=20)
    assert final.failure is not None
    assert final.failure.kind == "cancelled"
    assert calls.log == ["submit", "undo submit"]


async def test_the_deadline_reaches_a_parked_saga(target: Target) -> None:
    """Parked past its deadline: claimed at the deadline and compensated."""
    calls = Calls()
    saga = approval(calls, wait_timeout=60)
    short = SagaConfig(retry_delay_seconds=0, shutdown_timeout=2, default_timeout_seconds=0.5)
    stores = [target.open(), target.open()]
    worker = SagaManager(stores[0], config=CONFIG, worker_id="worker")
    worker.register(saga, config=short)
    client = SagaManager(stores[1], config=CONFIG, worker_id="client")
    client.register(saga, config=short)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop=stop, poll_interval=0.05))
    try:
        saga_id = await client.enqueue("approval", {})
        parked = await until_parked(client, saga_id)
        assert parked.not_before == parked.deadline_at
        final = await client.wait(saga_id, timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=10)
        for manager in (worker, client):
            await manager.close()
        for store in stores:
            await store.close()
    assert final.failure is not None
    assert final.failure.kind == "deadline"
    assert calls.log == ["submit", "undo submit"]
