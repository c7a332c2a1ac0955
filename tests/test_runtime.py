"""The API both front-ends share (``_runtime``): starting, waiting, listing, closing."""

from __future__ import annotations

import asyncio
from collections import ChainMap
from types import MappingProxyType
from typing import Any

import pytest

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.errors import SagaError
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.store import InMemorySagaStore, SagaStore
from lexigram.events.sagas.testing import StoreCall, StoreWrapper
from lexigram.events.sagas.types import SagaRecord, SagaStatus
from tests.support.helpers import WAIT, Script, blocking, manager_for

FAST = SagaConfig(retry_delay_seconds=0)


class SlowSaves(InMemorySagaStore):
    """An in-memory store whose inserts wait for ``unblock``."""

    def __init__(self) -> None:
        super().__init__()
        self.saving = asyncio.Event()
        self.unblock = asyncio.Event()

    async def save(self, record: SagaRecord) -> None:
        if record.version == 0:
            self.saving.set()
            await self.unblock.wait()
        await super().save(record)


async def test_start_racing_close_leaves_nothing_running_after_close() -> None:
    """A ``start()`` storing while ``close()`` begins: no saga runs after close returns."""
    store = SlowSaves()
    script = Script()
    manager = manager_for(script, store=store, config=SagaConfig(shutdown_timeout=0))
    starting = asyncio.create_task(manager.start("scripted", saga_id="s-1"))
    await store.saving.wait()
    closing = asyncio.create_task(manager.close())
    await asyncio.sleep(0)
    store.unblock.set()
    await closing
    await starting  # the start that was storing completed; its run was stopped by close
    assert manager.running() == ()
    heartbeats = [task for task in asyncio.all_tasks() if task.get_name() == "saga-heartbeat"]
    assert heartbeats == []
    record = await store.load("s-1")
    assert record is not None
    assert record.lease_owner is None  # released: any worker may run it at once


async def test_start_after_close_began_raises() -> None:
    """Once ``close()`` began, ``start()`` raises a clear error and stores nothing."""
    store = InMemorySagaStore()
    manager = manager_for(Script(), store=store, config=FAST)
    await manager.close()
    with pytest.raises(SagaError, match="closed"):
        await manager.start("scripted", saga_id="s-1")
    assert await store.load("s-1") is None


async def test_timed_out_waits_do_not_accumulate() -> None:
    """Polling a long saga with ``wait(timeout=...)`` keeps nothing per poll."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["a"] = blocking(entered, release)
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    run = manager._engine.runs[saga_id]
    for _ in range(200):
        with pytest.raises(TimeoutError):
            await manager.wait(saga_id, timeout=0)
    assert run.waiters == []
    release.set()
    assert (await manager.wait(saga_id, timeout=WAIT)).status is SagaStatus.COMPLETED
    await manager.close()


async def test_cancelled_waits_do_not_accumulate() -> None:
    """A waiter cancelled by its caller leaves nothing behind on the run."""
    script = Script()
    entered, release = asyncio.Event(), asyncio.Event()
    script.behaviours["a"] = blocking(entered, release)
    manager = manager_for(script, config=FAST)
    saga_id = await manager.start("scripted")
    await entered.wait()
    run = manager._engine.runs[saga_id]
    waiter = asyncio.create_task(manager.wait(saga_id))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert run.waiters == []
    release.set()
    await manager.wait(saga_id, timeout=WAIT)
    await manager.close()


@pytest.mark.parametrize(
    "data",
    [MappingProxyType({"order_id": "o-1"}), ChainMap[str, Any]({"order_id": "o-1"}, {"x": 1})],
    ids=["MappingProxyType", "ChainMap"],
)
async def test_start_accepts_any_mapping(data: Any) -> None:
    """``start()`` is typed as taking a ``Mapping``: read-only and chained ones work."""
    manager = manager_for(Script(), config=FAST)
    record = await manager.execute("scripted", data, timeout=WAIT)
    assert record.status is SagaStatus.COMPLETED
    assert record.data["order_id"] == "o-1"
    await manager.close()


@pytest.mark.parametrize("limit", ["x", True, 2.5, None])
async def test_list_limit_must_be_an_int(limit: Any) -> None:
    """``list(limit=...)`` that is not an int is a ``TypeError`` naming ``limit``."""
    manager = SagaManager()
    with pytest.raises(TypeError, match="limit"):
        await manager.list(limit=limit)
    await manager.close()


async def test_list_limit_must_not_be_negative() -> None:
    """A negative limit is a ``ValueError`` naming ``limit``."""
    manager = SagaManager()
    with pytest.raises(ValueError, match="limit"):
        await manager.list(limit=-1)
    await manager.close()


@pytest.mark.parametrize("limit", [2**63, 10**30])
async def test_a_list_limit_no_store_can_use_is_refused(limit: int) -> None:
    """A limit beyond ``MAX_LIST_LIMIT`` is a ``ValueError``, not a raw ``OverflowError``."""
    manager = SagaManager()
    with pytest.raises(ValueError, match="limit"):
        await manager.list(limit=limit)
    await manager.close()


class SlowClaims(StoreWrapper):
    """Claims wait for ``unblock`` before reaching the store."""

    def __init__(self, inner: SagaStore) -> None:
        super().__init__(inner)
        self.claiming = asyncio.Event()
        self.unblock = asyncio.Event()

    async def forward(self, call: StoreCall[Any]) -> Any:
        if call.method == "claim":
            self.claiming.set()
            await self.unblock.wait()
        return await super().forward(call)


async def test_recover_racing_close_leaves_no_saga_under_this_worker() -> None:
    """A claim landing after ``close()`` began: its saga is launched, stopped and released."""
    inner = InMemorySagaStore()
    entered, release = asyncio.Event(), asyncio.Event()
    first_script = Script()
    first = manager_for(first_script, store=inner, config=SagaConfig(shutdown_timeout=0))
    first_script.behaviours["a"] = blocking(entered, release)
    saga_id = await first.start("scripted")
    await entered.wait()
    await first.close()  # released: free for any worker
    store = SlowClaims(inner)
    second_script = Script()
    second_script.behaviours["a"] = blocking(asyncio.Event(), asyncio.Event())
    manager = manager_for(second_script, store=store, config=SagaConfig(shutdown_timeout=0))
    recovering = asyncio.create_task(manager.recover())
    await store.claiming.wait()
    closing = asyncio.create_task(manager.close())
    await asyncio.sleep(0)
    store.unblock.set()
    await closing
    assert await recovering == 1
    assert manager.running() == ()
    record = await inner.load(saga_id)
    assert record is not None
    assert not record.is_terminal
    assert record.lease_owner is None  # not stranded under the closed worker
