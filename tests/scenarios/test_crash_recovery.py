"""Real process kills: a worker SIGKILLed mid-saga, then a new process recovers it.

The worker dies inside every step and every compensation, or between two persistence
points (SPEC section 7; RELIABILITY 4, 8, 16).

Each case runs ``tests/support/crash_worker.py`` on a fresh SQLite file or PostgreSQL table:

1. the *doomed* worker starts one :class:`~tests.support.crash_worker.CrashSaga` and SIGKILLs
   itself at the chosen point, after the side-effect log recorded the invocation;
2. the test reads what the crash left in the store;
3. a *new process* (under the same worker name, or another one once the lease expired)
   calls ``recover()`` until the saga is terminal;
4. the outcome is compared with an uninterrupted run of the same saga, and the side-effect
   log and the store are checked against each invariant of SPEC section 7;
5. one more ``recover()`` (in this process) must change nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lexigram.events.sagas import (
    SagaConfig,
    SagaManager,
    SagaRecord,
    SagaStatus,
    SagaStepStatus,
)
from tests.support.crash_support import (
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
)
from tests.support.crash_worker import SAGA_NAME, CrashSaga, InstrumentedStore, Probe, SideEffectLog

pytestmark = pytest.mark.slow

DOOMED = "w-crash"
RESCUER = "w-rescue"
POISON_TEXT = "kept crashing its worker"


@dataclass(frozen=True)
class Crash:
    """Where the doomed worker dies, and who recovers."""

    label: str
    fail: bool
    kill_in: str | None = None
    kill_after_save: int | None = None
    same_worker: bool = True

    def __str__(self) -> str:
        return self.label

    def options(self) -> list[str]:
        """The doomed worker's kill option."""
        if self.kill_in is not None:
            return ["--kill-in", self.kill_in]
        assert self.kill_after_save is not None
        return ["--kill-after-save", str(self.kill_after_save)]


CRASHES = [
    # inside each step of a saga that completes
    Crash("in-step1", fail=False, kill_in="step:1"),
    Crash("in-step2", fail=False, kill_in="step:2", same_worker=False),
    Crash("in-step3", fail=False, kill_in="step:3"),
    # inside the failing step, and inside each compensation
    Crash("in-failing-step3", fail=True, kill_in="step:3", same_worker=False),
    Crash("in-compensation2", fail=True, kill_in="compensation:2"),
    Crash("in-compensation1", fail=True, kill_in="compensation:1", same_worker=False),
    # between persistence points: right after a write landed, before anything else ran
    Crash("after-start-write", fail=False, kill_after_save=1),
    Crash("after-step1-write", fail=False, kill_after_save=2, same_worker=False),
    Crash("after-terminal-write", fail=False, kill_after_save=4),
    Crash("after-failure-write", fail=True, kill_after_save=4, same_worker=False),
    Crash("after-compensation2-write", fail=True, kill_after_save=5),
]


def points_in(entries: list[dict[str, Any]], saga: str, pid: int) -> list[str]:
    """The points the saga entered in one process."""
    return [
        e["point"] for e in entries if e["kind"] == "call" and e["saga"] == saga and e["pid"] == pid
    ]


def expected_snapshot(durable: list[str], *, fail: bool) -> dict[str, str]:
    """Step statuses the store holds when the points in ``durable`` completed durably."""
    steps: dict[str, str] = {}
    for point in durable:
        kind, n = point.split(":")
        if kind == "step":
            steps[f"s{n}"] = "failed" if fail and n == "3" else "completed"
        else:
            steps[f"s{n}"] = "compensated"
    return steps


def expected_status(durable: list[str], *, fail: bool, terminal: SagaStatus | None) -> SagaStatus:
    """The saga status the store holds after ``durable`` (``terminal``: all were written)."""
    if terminal is not None:
        return terminal
    if any(p.startswith("compensation") for p in durable) or (fail and "step:3" in durable):
        return SagaStatus.COMPENSATING
    return SagaStatus.RUNNING if durable else SagaStatus.PENDING


async def recover_again(target: Target, log: Path, worker: str) -> int:
    """One more ``recover()`` by a worker in this process; returns what it resumed."""
    store = InstrumentedStore(target.open(), SideEffectLog(log, worker=worker))
    manager = SagaManager(store, config=SagaConfig(lease_seconds=5), worker_id=worker)
    probe = Probe(log=store.log)
    manager.register(CrashSaga, factory=lambda: CrashSaga(probe))
    try:
        return await manager.recover()
    finally:
        await manager.close()
        await store.close()
        assert store.log is not None
        store.log.close()


def same_record(before: SagaRecord, after: SagaRecord) -> None:
    """Inv. 6 / N4: the stored terminal record did not change at all."""
    assert after.version == before.version
    assert after.status == before.status
    assert after.completed_at == before.completed_at
    assert after.updated_at == before.updated_at
    assert outcome(after) == outcome(before)


@pytest.mark.parametrize("crash", CRASHES, ids=str)
async def test_killed_worker_is_recovered_by_a_new_process(
    target: Target, workers: Workers, crash: Crash
) -> None:
    """A SIGKILLed saga resumes from its last durable point; every invariant of SPEC 7 holds."""
    saga_id = f"saga-{crash.label}"
    data = sample_data(1, fail=crash.fail)
    reference = await reference_run(saga_id, data)
    points = reference.points

    # 1. The doomed worker dies at the chosen point.
    doomed = await workers.start(
        "run",
        target,
        "--worker",
        DOOMED,
        "--lease",
        "1",
        "--sagas",
        json.dumps([[saga_id, data]]),
        *crash.options(),
    )
    killed = await workers.finish(doomed)
    assert killed.killed, killed.describe()

    if crash.kill_in is not None:
        index = points.index(crash.kill_in)
        durable = points[:index]
        in_flight = [crash.kill_in]
        doomed_points, rescuer_points = points[: index + 1], points[index:]
    else:
        assert crash.kill_after_save is not None
        durable = points[: crash.kill_after_save - 1]
        in_flight = []
        doomed_points, rescuer_points = durable, points[len(durable) :]
    finished_before = len(durable) == len(points)

    # 2. What the crash left: exactly the completed points, still leased to the dead worker.
    snapshot = await target.load(saga_id)
    terminal = reference.record.status if finished_before else None
    assert snapshot.status is expected_status(durable, fail=crash.fail, terminal=terminal)
    assert {n: s.status.value for n, s in snapshot.steps.items()} == expected_snapshot(
        durable, fail=crash.fail
    )
    assert snapshot.version == 1 + len(durable)  # the start write + one per completed point
    assert snapshot.lease_owner == (None if finished_before else DOOMED)

    # 3. A new process recovers it.
    rescuer = DOOMED if crash.same_worker else RESCUER
    recovered = await workers.run(
        "recover", target, "--worker", rescuer, "--lease", "5", "--until-idle"
    )
    assert recovered.returncode == 0, recovered.describe()
    claims = 0 if finished_before else 1
    assert recovered.summary["resumed"] == claims
    assert recovered.summary["problems"] == []

    # 4. Same outcome as an uninterrupted run, data intact (inv. 4, N1, N5).
    final = await target.load(saga_id)
    assert final.is_terminal
    assert outcome(final) == outcome(reference.record)
    assert final.lease_owner is None

    entries = read_log(workers.log)
    # Inv. 3 / N2: durable points never ran again; the in-flight one ran exactly once more.
    assert calls(entries, saga_id) == doomed_points + rescuer_points
    assert points_in(entries, saga_id, doomed.pid) == doomed_points
    rescued = [e for e in entries if e["saga"] == saga_id and e["pid"] != doomed.pid]
    assert [e["point"] for e in rescued if e["kind"] == "call"] == rescuer_points
    assert not set(durable) & set(rescuer_points)
    for point in in_flight:  # the re-run gets the same idempotency key
        keys = {e["key"] for e in entries_of(entries, saga_id, "call") if e["point"] == point}
        assert len(keys) == 1, keys
    # Inv. 2 / N3: compensations for exactly the completed steps, latest first, never s3.
    compensations = [p for p in dict.fromkeys(calls(entries, saga_id)) if "compensation" in p]
    assert compensations == (["compensation:2", "compensation:1"] if crash.fail else [])
    # Inv. 1: every step and compensation started only after the previous write landed.
    check_durable_before_start(entries, saga_id)
    # Inv. 6 / N4 / N6: one version per write, one terminal write, the claimer wrote after.
    claim_entries = entries_of(entries, saga_id, "claim")
    assert len(claim_entries) == claims
    for claim in claim_entries:
        assert claim["w"] == rescuer
        assert claim["previous"] == DOOMED
        assert claim["attempts"] == 1
    assert final.version == reference.record.version + claims
    check_writes(entries, saga_id, final)

    # 5. Recovering again changes nothing.
    resumed = await recover_again(target, workers.log, "w-late")
    assert resumed == 0
    same_record(final, await target.load(saga_id))
    assert calls(read_log(workers.log), saga_id) == calls(entries, saga_id)


@pytest.mark.parametrize(
    "second_kill",
    [["--kill-after-save", "2"], ["--kill-in", "compensation:1"]],
    ids=["after-failure-write", "in-compensation1"],
)
async def test_crash_during_recovery_is_recovered_again(
    target: Target, workers: Workers, second_kill: list[str]
) -> None:
    """The recovering process is killed too; a third one finishes the saga (RELIABILITY 3).

    The first worker dies in step 2 of a saga whose step 3 fails; the recovering worker
    dies after writing the failure, or inside compensation 1; a third process finishes.
    """
    saga_id = "saga-double-crash"
    data = sample_data(8, fail=True)
    reference = await reference_run(saga_id, data)
    first = await workers.run(
        "run",
        target,
        "--worker",
        DOOMED,
        "--sagas",
        json.dumps([[saga_id, data]]),
        "--kill-in",
        "step:2",
    )
    assert first.killed, first.describe()
    second = await workers.run("recover", target, "--worker", RESCUER, "--until-idle", *second_kill)
    assert second.killed, second.describe()
    third = await workers.run("recover", target, "--worker", "w-third", "--until-idle")
    assert third.returncode == 0, third.describe()
    assert third.summary["resumed"] == 1

    final = await target.load(saga_id)
    assert outcome(final) == outcome(reference.record)
    entries = read_log(workers.log)
    died_compensating = second_kill[0] == "--kill-in"
    # Each crash repeats the point it was in; the third worker picks up where it stopped.
    in_flight = ["step:2", "compensation:1"] if died_compensating else ["step:2"]
    expected: list[str] = []
    for point in reference.points:
        expected += [point, point] if point in in_flight else [point]
    assert calls(entries, saga_id) == expected
    left_over = ["compensation:1"] if died_compensating else ["compensation:2", "compensation:1"]
    assert calls_by(entries, saga_id, "w-third") == left_over
    claims = entries_of(entries, saga_id, "claim")
    assert [(c["w"], c["previous"]) for c in claims] == [(RESCUER, DOOMED), ("w-third", RESCUER)]
    # The rescuer made progress before dying, so the third takeover is not counted as a
    # poison attempt (a saga that advances is never poisoned).
    assert claims[1]["attempts"] == 1
    assert final.version == reference.record.version + 2
    check_durable_before_start(entries, saga_id)
    check_writes(entries, saga_id, final)


async def test_poison_step_fails_after_max_recovery_attempts(
    target: Target, workers: Workers
) -> None:
    """A step that kills its worker every time is failed after max_recovery_attempts takeovers.

    RELIABILITY 16 with real processes: each new process takes the saga over and dies in
    step 2 again; the takeover after ``max_recovery_attempts`` (default 5) crashed ones marks
    step 2 ``FAILED`` as a poison step without running it, and the saga compensates.
    """
    saga_id = "saga-poison-step"
    data = sample_data(2, fail=False)
    limit = SagaConfig().max_recovery_attempts
    kill = ["--kill-in", "step:2"]
    first = await workers.run(
        "run", target, "--worker", DOOMED, "--sagas", json.dumps([[saga_id, data]]), *kill
    )
    assert first.killed, first.describe()
    for attempt in range(1, limit + 1):
        again = await workers.run("recover", target, "--worker", DOOMED, "--until-idle", *kill)
        assert again.killed, f"takeover {attempt}: {again.describe()}"
        record = await target.load(saga_id)
        assert record.recovery_attempts == attempt
        assert not record.is_terminal
    last = await workers.run("recover", target, "--worker", DOOMED, "--until-idle", *kill)
    assert last.returncode == 0, last.describe()
    assert last.summary["resumed"] == 1

    final = await target.load(saga_id)
    assert final.status is SagaStatus.COMPENSATED
    s2 = final.steps["s2"]
    assert s2.status is SagaStepStatus.FAILED
    assert s2.error is not None
    assert POISON_TEXT in s2.error
    assert final.error is not None
    assert POISON_TEXT in final.error  # N7: the cause is persisted and readable
    assert "s2" in final.error
    assert final.steps["s1"].status is SagaStepStatus.COMPENSATED
    assert "s3" not in final.steps
    assert final.data["undone_s1"] == {"n": 1, "saw": ["s1"]}
    assert final.data["after_s1"]["n"] == 1

    entries = read_log(workers.log)
    # Step 2 ran in the first process and in each crashed takeover, never in the last one.
    assert calls(entries, saga_id) == ["step:1"] + ["step:2"] * (limit + 1) + ["compensation:1"]
    assert len(entries_of(entries, saga_id, "claim")) == limit + 1
    check_durable_before_start(entries, saga_id)
    check_writes(entries, saga_id, final)
    resumed = await recover_again(target, workers.log, "w-late")
    assert resumed == 0
    same_record(final, await target.load(saga_id))


async def test_poison_compensation_fails_and_the_rest_compensate(
    target: Target, workers: Workers
) -> None:
    """A compensation that kills its worker every time is failed; the others still run.

    RELIABILITY 16 for a compensation (``max_recovery_attempts=1``): compensation 2 is
    marked failed as a poison, compensation 1 runs, and the saga ends ``FAILED`` naming s2.
    """
    saga_id = "saga-poison-compensation"
    data = sample_data(3, fail=True)
    options = ["--kill-in", "compensation:2", "--max-recovery-attempts", "1"]
    first = await workers.run(
        "run", target, "--worker", DOOMED, "--sagas", json.dumps([[saga_id, data]]), *options
    )
    assert first.killed, first.describe()
    again = await workers.run("recover", target, "--worker", DOOMED, "--until-idle", *options)
    assert again.killed, again.describe()
    last = await workers.run("recover", target, "--worker", DOOMED, "--until-idle", *options)
    assert last.returncode == 0, last.describe()

    final = await target.load(saga_id)
    assert final.status is SagaStatus.FAILED
    assert final.error is not None
    assert "'s2'" in final.error
    s2 = final.steps["s2"]
    assert s2.status is SagaStepStatus.FAILED
    assert s2.compensation_error is not None
    assert POISON_TEXT in s2.compensation_error
    assert final.steps["s1"].status is SagaStepStatus.COMPENSATED
    assert final.steps["s3"].status is SagaStepStatus.FAILED
    entries = read_log(workers.log)
    assert calls(entries, saga_id) == [
        "step:1",
        "step:2",
        "step:3",
        "compensation:2",
        "compensation:2",
        "compensation:1",
    ]
    check_durable_before_start(entries, saga_id)
    check_writes(entries, saga_id, final)


async def test_recovery_leaves_no_saga_of_another_name(target: Target, workers: Workers) -> None:
    """A recovering worker that does not know a crashed saga's name leaves it untouched."""
    saga_id = "saga-foreign"
    data = sample_data(4, fail=False)
    first = await workers.run(
        "run",
        target,
        "--worker",
        DOOMED,
        "--sagas",
        json.dumps([[saga_id, data]]),
        "--kill-in",
        "step:2",
    )
    assert first.killed, first.describe()
    before = await target.load(saga_id)
    store = target.open()
    manager = SagaManager(store, worker_id=DOOMED)  # nothing registered under SAGA_NAME
    try:
        assert await manager.recover() == 0
        assert [p.saga_id for p in manager.recovery_problems] == [saga_id]
    finally:
        await manager.close()
        await store.close()
    after = await target.load(saga_id)
    assert after.version == before.version
    assert after.lease_owner == DOOMED
    assert after.saga_name == SAGA_NAME
