"""Property tests of the engine's invariants (SPEC section 7), with hypothesis.

Each example runs real sagas on a fresh event loop (``asyncio.run``) with zero retry delays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from lexigram.events.sagas.context import Err, SagaStepResult
from lexigram.events.sagas.store import InMemorySagaStore
from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaStatus, SagaStepStatus
from tests.support.helpers import (
    FAST,
    WAIT,
    Behaviour,
    Fault,
    FaultStore,
    Script,
    Tuning,
    check_at_least_once,
    crash_and_recover,
    manager_for,
    raise_each,
    returning,
)

FAILURES = ("returned", "err", "non_retryable", "transient")


@dataclass(frozen=True)
class Scenario:
    """A scripted saga: which steps exist, which compensate, what fails and how."""

    steps: tuple[str, ...]
    compensated: frozenset[str]
    fail_at: int | None
    failure: str
    max_retries: int
    broken_undos: frozenset[str] = field(default_factory=frozenset)

    def failing_behaviour(self) -> Behaviour:
        if self.failure == "returned":
            return returning(SagaStepResult.fail("declined"))
        if self.failure == "err":
            return returning(Err("declined"))
        if self.failure == "non_retryable":
            return raise_each(*(ValueError("invalid") for _ in range(20)))
        return raise_each(*(ConnectionError(f"down {n}") for n in range(20)))

    def script(self) -> Script:
        script = Script()
        if self.fail_at is not None:
            script.behaviours[self.steps[self.fail_at]] = self.failing_behaviour()
        for step in self.broken_undos:
            script.undo_behaviours[step] = raise_each(*(RuntimeError() for _ in range(20)))
        return script

    def saga(self) -> dict[str, object]:
        tuning = {
            step: Tuning(max_retries=self.max_retries, undo_max_retries=0) for step in self.steps
        }
        return {"steps": self.steps, "compensated": self.compensated, "tuning": tuning}

    @property
    def completed(self) -> tuple[str, ...]:
        """The steps that complete before the failure (all of them without one)."""
        return self.steps if self.fail_at is None else self.steps[: self.fail_at]


@st.composite
def scenarios(draw: st.DrawFn, *, broken_undos: bool = False) -> Scenario:
    count = draw(st.integers(min_value=1, max_value=6))
    steps = tuple(f"s{n}" for n in range(count))
    compensated = frozenset(draw(st.sets(st.sampled_from(steps))))
    fail_at = draw(st.none() | st.integers(min_value=0, max_value=count - 1))
    broken: frozenset[str] = frozenset()
    if broken_undos and compensated:
        broken = frozenset(draw(st.sets(st.sampled_from(sorted(compensated)))))
    return Scenario(
        steps=steps,
        compensated=compensated,
        fail_at=fail_at,
        failure=draw(st.sampled_from(FAILURES)),
        max_retries=draw(st.integers(min_value=0, max_value=3)),
        broken_undos=broken,
    )


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), WAIT * 4))


# --------------------------------------------------------------------------- properties


@given(scenarios())
def test_compensation_is_the_reverse_of_completion(scenario: Scenario) -> None:
    """Exactly the completed steps with a compensation are undone, in reverse order."""

    async def check() -> None:
        script = scenario.script()
        manager = manager_for(script, config=FAST, **scenario.saga())  # type: ignore[arg-type]
        record = await manager.execute("scripted", timeout=WAIT)
        await manager.close()
        completed_order = sorted(
            (s for s in record.steps.values() if s.completion_seq is not None),
            key=lambda s: s.completion_seq or 0,
        )
        assert [s.step_name for s in completed_order] == list(scenario.completed)
        expected = [s for s in reversed(scenario.completed) if s in scenario.compensated]
        assert script.undone() == (expected if scenario.fail_at is not None else [])
        assert script.actions() == [
            *scenario.completed,
            *(
                [scenario.steps[scenario.fail_at]]
                * (1 + (scenario.max_retries if scenario.failure == "transient" else 0))
                if scenario.fail_at is not None
                else []
            ),
        ]
        if scenario.fail_at is None:
            assert record.status is SagaStatus.COMPLETED
            return
        assert record.status is SagaStatus.COMPENSATED
        failed = scenario.steps[scenario.fail_at]
        assert record.steps[failed].status is SagaStepStatus.FAILED
        assert set(record.steps) == {*scenario.completed, failed}
        for step in scenario.completed:
            expected_status = (
                SagaStepStatus.COMPENSATED
                if step in scenario.compensated
                else SagaStepStatus.COMPLETED
            )
            assert record.steps[step].status is expected_status

    run(check)


@given(max_retries=st.integers(min_value=0, max_value=6))
def test_always_failing_transient_step_runs_max_retries_plus_one(max_retries: int) -> None:
    """A step failing transiently every time is attempted exactly ``max_retries + 1`` times."""

    async def check() -> None:
        script = Script()
        script.behaviours["b"] = raise_each(*(ConnectionError() for _ in range(20)))
        tuning = {"b": Tuning(max_retries=max_retries)}
        manager = manager_for(script, config=FAST, tuning=tuning)
        record = await manager.execute("scripted", timeout=WAIT)
        await manager.close()
        assert script.count("b") == max_retries + 1
        assert record.steps["b"].attempts == max_retries + 1
        assert len(record.steps["b"].attempt_errors) == max_retries + 1

    run(check)


@given(scenarios(broken_undos=True))
def test_terminal_state_is_written_once_and_never_changes(scenario: Scenario) -> None:
    """The terminal status is the last save; cancel, resume and recover leave it as is."""

    async def check() -> None:
        store = FaultStore(InMemorySagaStore())
        script = scenario.script()
        manager = manager_for(script, store=store, config=FAST, **scenario.saga())  # type: ignore[arg-type]
        record = await manager.execute("scripted", saga_id="s-1", timeout=WAIT)
        statuses = [status for *_, status in store.saves]
        assert [s for s in statuses if s in TERMINAL_SAGA_STATUSES] == [record.status]
        assert statuses[-1] == record.status
        calls = list(script.calls)
        assert (await manager.cancel("s-1", reason="late")).status == record.status
        await manager.resume("s-1")
        assert await manager.recover() == 0
        after = await manager.get("s-1")
        await manager.close()
        assert after is not None
        assert (after.status, after.version, after.error) == (
            record.status,
            record.version,
            record.error,
        )
        assert script.calls == calls

    run(check)


@given(scenarios(broken_undos=True))
def test_version_rises_by_exactly_one_per_save(scenario: Scenario) -> None:
    """Every save raises the record's version by exactly one, from 1 upwards."""

    async def check() -> None:
        store = FaultStore(InMemorySagaStore())
        manager = manager_for(
            scenario.script(),
            store=store,
            config=FAST,
            **scenario.saga(),  # type: ignore[arg-type]
        )
        record = await manager.execute("scripted", timeout=WAIT)
        await manager.close()
        assert all(after == before + 1 for _, before, after, _ in store.saves)
        assert [after for *_, after, _ in store.saves] == list(range(1, len(store.saves) + 1))
        assert record.version == len(store.saves)

    run(check)


@given(scenarios(), st.integers(min_value=1, max_value=40), st.booleans())
def test_crash_at_any_write_recovers_to_the_uninterrupted_outcome(
    scenario: Scenario, point: int, before: bool
) -> None:
    """After a crash at any write, recovery reaches what an uninterrupted run reaches."""

    async def check() -> None:
        counting = FaultStore(InMemorySagaStore())
        manager = manager_for(
            scenario.script(),
            store=counting,
            config=FAST,
            **scenario.saga(),  # type: ignore[arg-type]
        )
        expected = await manager.execute("scripted", {"order_id": "o-1"}, "s-1", timeout=WAIT)
        await manager.close()
        write = 1 + (point - 1) % counting.writes
        fault = Fault(crash_before=write) if before else Fault(crash_after=write)
        crashed = await crash_and_recover(scenario.script, fault, **scenario.saga())
        if before and write == 1:
            assert crashed.at_crash is None
            assert crashed.script.calls == []
            return
        assert crashed.final is not None
        assert crashed.final.status == expected.status
        assert crashed.final.data == expected.data
        assert crashed.final.step_statuses() == expected.step_statuses()
        check_at_least_once(crashed)

    run(check)
