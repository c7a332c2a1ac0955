"""Workers racing for sagas, a zombie worker, a long step (SPEC 7 inv. 5; RELIABILITY 5-7).

- A killed worker leaves dozens of sagas mid-step or mid-compensation; several recovering
  workers (separate processes, or separate managers and store instances in one process)
  call ``recover()`` at the same time: each saga is resumed by exactly one of them, no
  step that completed before the takeover runs again, the in-flight ones run once more.
- A worker paused past its lease (SIGSTOP, or its event loop frozen) wakes up after another
  worker finished its saga: it writes nothing and runs no further step.
- A step longer than the lease, with a healthy heartbeat, is never taken over.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas import SagaBase, SagaConfig, SagaManager, SagaRecord, SagaStatus
from tests.support.crash_support import (
    Reference,
    Target,
    Workers,
    calls,
    calls_by,
    check_durable_before_start,
    check_writes,
    entries_of,
    outcome,
    read_log,
    reference_run,
    sample_data,
    wait_for_log,
)
from tests.support.crash_worker import (
    CrashSaga,
    InstrumentedStore,
    Probe,
    SideEffectLog,
    recover_until,
)

pytestmark = pytest.mark.slow

SAGAS = 40
RACERS = 3
# Where each saga of the killed worker hangs (and whether step 3 fails, to compensate).
HANG_POINTS = [
    ("step:1", False),
    ("step:2", False),
    ("step:3", False),
    ("step:3", True),
    ("compensation:2", True),
    ("compensation:1", True),
]


def saga_factory(probe: Probe) -> Callable[[], SagaBase]:
    """Build each run's saga with this worker's probe."""
    return lambda: CrashSaga(probe)


@dataclass
class Abandoned:
    """What a killed worker left behind."""

    references: dict[str, Reference]
    hang: dict[str, str]
    snapshots: dict[str, SagaRecord]
    doomed_pid: int


async def abandon_sagas(target: Target, workers: Workers) -> Abandoned:
    """A worker starts ``SAGAS`` sagas and is SIGKILLed once each hangs at its point.

    Its sagas are spread over four managers with different lease lengths, so their leases
    expire at different moments and the recovering workers compete for each group.
    """
    sagas: list[tuple[str, dict[str, Any]]] = []
    hang: dict[str, str] = {}
    for index in range(SAGAS):
        point, fail = HANG_POINTS[index % len(HANG_POINTS)]
        saga_id = f"race-{index:02d}"
        sagas.append((saga_id, sample_data(index, fail=fail, hang=point)))
        hang[saga_id] = point
    references = {saga_id: await reference_run(saga_id, data) for saga_id, data in sagas}
    doomed = await workers.start(
        "run",
        target,
        "--worker",
        "w-dead",
        "--lease",
        "1",
        "--groups",
        "4",
        "--sagas",
        json.dumps(sagas),
        "--hang-from-data",
        "--kill-when-hanging",
        str(SAGAS),
    )
    killed = await workers.finish(doomed)
    assert killed.killed, killed.describe()
    snapshots = await target.load_all(hang)
    for record in snapshots.values():
        assert not record.is_terminal
        assert record.lease_owner is not None
        assert record.lease_owner.startswith("w-dead")
    return Abandoned(references, hang, snapshots, doomed.pid)


def check_race(
    entries: list[dict[str, Any]], left: Abandoned, finals: dict[str, SagaRecord]
) -> dict[str, int]:
    """Check every saga after the race; return how many sagas each racer resumed."""
    won: dict[str, int] = {}
    for saga_id, reference in left.references.items():
        final = finals[saga_id]
        # Every saga ends as an uninterrupted run does, data intact (N1, N5, inv. 4).
        assert outcome(final) == outcome(reference.record), saga_id
        # Resumed by exactly one worker (inv. 5, N6).
        claims = entries_of(entries, saga_id, "claim")
        assert len(claims) == 1, f"{saga_id} claimed {len(claims)} times: {claims}"
        winner = claims[0]["w"]
        assert winner.startswith("racer-"), claims
        assert claims[0]["previous"].startswith("w-dead")
        won[winner] = won.get(winner, 0) + 1
        # No completed step ran again; the in-flight one ran exactly once more (inv. 3, N2).
        points = reference.points
        index = points.index(left.hang[saga_id])
        assert calls(entries, saga_id) == points[: index + 1] + points[index:], saga_id
        before = [
            e["point"] for e in entries_of(entries, saga_id, "call") if e["pid"] == left.doomed_pid
        ]
        assert before == points[: index + 1], saga_id
        after = [e for e in entries_of(entries, saga_id, "call") if e["pid"] != left.doomed_pid]
        assert {e["w"] for e in after} == {winner}, f"{saga_id} run by {after}"
        check_durable_before_start(entries, saga_id)
        check_writes(entries, saga_id, final)
        # Inv. 6: the crash left one write per completed point; the takeover added one.
        assert left.snapshots[saga_id].version == 1 + index
        assert final.version == reference.record.version + 1
    assert sum(won.values()) == len(left.references)
    return won


async def test_racing_recoverer_processes_resume_each_saga_once(
    target: Target, workers: Workers
) -> None:
    """Several processes recover a killed worker's sagas at once: each runs exactly once."""
    left = await abandon_sagas(target, workers)
    racers = [
        await workers.start(
            "recover", target, "--worker", f"racer-{n}", "--lease", "5", "--until-idle", "--ready"
        )
        for n in range(RACERS)
    ]
    for proc in racers:
        await workers.wait_ready(proc)
    for proc in racers:  # release them together
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    await asyncio.gather(*(proc.stdin.drain() for proc in racers if proc.stdin is not None))
    results = [await workers.finish(proc) for proc in racers]
    for result in results:
        assert result.returncode == 0, result.describe()
        assert result.summary["problems"] == []
    finals = await target.load_all(left.references)
    won = check_race(read_log(workers.log), left, finals)
    assert {
        r.summary["worker"]: r.summary["resumed"] for r in results if r.summary["resumed"]
    } == won


async def test_racing_managers_in_one_process_resume_each_saga_once(
    target: Target, workers: Workers
) -> None:
    """Separate managers and store instances in one process race to recover: one winner each."""
    left = await abandon_sagas(target, workers)
    stores: list[InstrumentedStore] = []
    managers: list[SagaManager] = []
    for n in range(RACERS):
        log = SideEffectLog(workers.log, worker=f"racer-{n}")
        store = InstrumentedStore(target.open(), log)
        probe = Probe(log=log)
        manager = SagaManager(store, config=SagaConfig(lease_seconds=5), worker_id=f"racer-{n}")
        manager.register(CrashSaga, factory=saga_factory(probe))
        stores.append(store)
        managers.append(manager)
    try:
        resumed = await asyncio.gather(
            *(
                recover_until(manager, store, expect=None, until_idle=True, timeout=90)
                for manager, store in zip(managers, stores, strict=True)
            )
        )
    finally:
        for manager, store in zip(managers, stores, strict=True):
            await manager.close()
            await store.close()
            assert store.log is not None
            store.log.close()
    finals = await target.load_all(left.references)
    won = check_race(read_log(workers.log), left, finals)
    assert {m.worker_id: n for m, n in zip(managers, resumed, strict=True) if n} == won


async def test_zombie_worker_writes_nothing_after_its_lease_was_taken_over(
    target: Target, workers: Workers, tmp_path: Path
) -> None:
    """A worker paused past its lease wakes after the takeover: no write, no further step.

    On PostgreSQL the worker process is paused with SIGSTOP. On SQLite its event loop is
    frozen instead (the step blocks it), which stops the heartbeat the same way but cannot
    leave the database file locked by a process stopped mid-transaction.
    """
    saga_id = "saga-zombie"
    release = tmp_path / "release"
    block = ["--block-in", "step:2", "--release", str(release)]
    freeze = target.kind == "sqlite"
    zombie = await workers.start(
        "run",
        target,
        "--worker",
        "w-zombie",
        "--lease",
        "1",
        "--sagas",
        json.dumps([[saga_id, sample_data(5, fail=False)]]),
        *block,
        *(["--block-loop"] if freeze else []),
    )
    stopped = False
    try:
        await wait_for_log(
            workers.log, lambda es: "step:2" in calls(es, saga_id), what="the zombie in step 2"
        )
        if not freeze:
            os.kill(zombie.pid, signal.SIGSTOP)
            stopped = True
        rescue = await workers.run(
            "recover", target, "--worker", "w-rescue", "--lease", "5", "--expect", "1"
        )
        assert rescue.returncode == 0, rescue.describe()
        assert rescue.summary["claimed"] == [saga_id]
        rescued = await target.load(saga_id)
        assert rescued.status is SagaStatus.COMPLETED
    finally:
        release.touch()
        if stopped:
            os.kill(zombie.pid, signal.SIGCONT)
    woke = await workers.finish(zombie)
    assert woke.returncode == 0, woke.describe()
    assert woke.summary["statuses"] == {saga_id: "completed"}  # it sees the rescuer's result

    final = await target.load(saga_id)
    assert final.version == rescued.version
    assert final.updated_at == rescued.updated_at
    assert final.completed_at == rescued.completed_at
    assert outcome(final) == outcome(rescued)
    entries = read_log(workers.log)
    assert calls_by(entries, saga_id, "w-zombie") == ["step:1", "step:2"]
    assert calls_by(entries, saga_id, "w-rescue") == ["step:2", "step:3"]
    (claim,) = entries_of(entries, saga_id, "claim")
    zombie_saves = [e["v"] for e in entries_of(entries, saga_id, "save") if e["w"] == "w-zombie"]
    assert zombie_saves == [1, 2]  # the start and step 1, both before the takeover
    assert max(zombie_saves) < claim["v"]
    check_writes(entries, saga_id, final)
    reference = await reference_run(saga_id, sample_data(5, fail=False))
    assert outcome(final) == outcome(reference.record)


async def test_long_step_with_a_healthy_heartbeat_is_not_taken_over(
    target: Target, workers: Workers, tmp_path: Path
) -> None:
    """A step running for several lease lengths keeps its lease; recover() elsewhere takes none."""
    saga_id = "saga-slow"
    lease = 3.0
    release = tmp_path / "release"
    slow = await workers.start(
        "run",
        target,
        "--worker",
        "w-slow",
        "--lease",
        str(lease),
        "--sagas",
        json.dumps([[saga_id, sample_data(6, fail=False)]]),
        "--block-in",
        "step:2",
        "--release",
        str(release),
    )
    log = SideEffectLog(workers.log, worker="w-eager")
    store = InstrumentedStore(target.open(), log)
    eager = SagaManager(store, config=SagaConfig(lease_seconds=lease), worker_id="w-eager")
    probe = Probe(log=log)
    eager.register(CrashSaga, factory=lambda: CrashSaga(probe))
    loop = asyncio.get_running_loop()
    try:
        await wait_for_log(
            workers.log, lambda es: "step:2" in calls(es, saga_id), what="the slow step"
        )
        first = await store.load(saga_id)
        assert first is not None
        assert first.lease_expires_at is not None
        expiry = first.lease_expires_at
        attempts = 0
        deadline = loop.time() + 90
        while True:
            assert await eager.recover() == 0
            attempts += 1
            now = await store.load(saga_id)
            assert now is not None
            assert now.lease_owner == "w-slow"
            assert now.lease_expires_at is not None
            # Done once the first lease is long over and the heartbeat renewed it since.
            if datetime.now(UTC) > expiry + timedelta(
                seconds=lease
            ) and now.lease_expires_at >= expiry + timedelta(seconds=2 * lease):
                break
            assert loop.time() < deadline, "the heartbeat never renewed the lease"
            await asyncio.sleep(0.1)
        assert attempts > 1
    finally:
        release.touch()
        await eager.close()
        await store.close()
        log.close()
    done = await workers.finish(slow)
    assert done.returncode == 0, done.describe()
    final = await target.load(saga_id)
    assert final.status is SagaStatus.COMPLETED
    assert final.version == 4  # start + three steps: no claim, no release
    assert final.previous_owner is None
    assert final.recovery_attempts == 0
    entries = read_log(workers.log)
    assert calls_by(entries, saga_id, "w-slow") == ["step:1", "step:2", "step:3"]
    assert [e for e in entries if e["w"] == "w-eager"] == []
    check_writes(entries, saga_id, final)


class JumpClock:
    """The real UTC time, plus an offset a test can push forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        """Return the shifted time."""
        return datetime.now(UTC) + self.offset


async def test_worker_never_takes_over_its_own_running_saga(tmp_path: Path) -> None:
    """recover() in the worker that runs a saga never starts a second run of it.

    Even when the store's clock says the worker's own lease ran out (a stalled heartbeat),
    the saga is still running here: claiming it would run its step twice at once.
    """
    from lexigram.events.sagas.sqlite import SQLiteSagaStore

    clock = JumpClock()
    log_path = tmp_path / "side-effects.log"
    release = tmp_path / "release"
    log = SideEffectLog(log_path, worker="w-self")
    store = InstrumentedStore(SQLiteSagaStore(tmp_path / "sagas.db", clock=clock), log)
    manager = SagaManager(
        store, config=SagaConfig(lease_seconds=30), worker_id="w-self", clock=clock
    )
    probe = Probe(log=log, block_in="step:2", release=release)
    manager.register(CrashSaga, factory=lambda: CrashSaga(probe))
    saga_id = "saga-self"
    try:
        await manager.start("crash_saga", sample_data(7, fail=False), saga_id=saga_id)
        await wait_for_log(log_path, lambda es: "step:2" in calls(es, saga_id), what="step 2")
        clock.offset = timedelta(hours=1)  # the lease is long over by the store's clock
        assert await manager.recover() == 0
        assert manager.running() == (saga_id,)
        release.touch()
        final = await manager.wait(saga_id, timeout=60)
    finally:
        await manager.close()
        await store.close()
        log.close()
    assert final.status is SagaStatus.COMPLETED
    entries = read_log(log_path)
    assert calls(entries, saga_id) == ["step:1", "step:2", "step:3"]
    assert entries_of(entries, saga_id, "claim") == []
    check_writes(entries, saga_id, final)
