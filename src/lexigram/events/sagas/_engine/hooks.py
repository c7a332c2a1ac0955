"""What the engine tells an observer (tracing, metrics): the ``EngineHooks`` port.

The engine holds ``hooks`` (``None`` unless a tool such as
:func:`lexigram.events.sagas.otel.instrument` set them) and calls them at a few points: a
saga about to be stored (``stamp``, where the trace context of the caller is written into
its metadata), a run's beginning and end, and each attempt of a step or a compensation,
around the user code (so that what the user code does is inside the attempt's span).
Without hooks the engine pays one attribute check per run and per step, nothing per
attempt.

Hooks are called from the run's own task and must not raise: an observer's failure must
never fail a saga.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from lexigram.events.sagas._engine.attempt import attempt_once
from lexigram.events.sagas._engine.flow import RetryPolicy, StepCallable
from lexigram.events.sagas._engine.rules import AttemptOutcome
from lexigram.events.sagas._engine.run import SagaRun
from lexigram.events.sagas.context import SagaContext

__all__ = ["EngineHooks", "attempt_observed"]


class EngineHooks(Protocol):
    """An observer of the engine. No method may raise."""

    def stamp(self, metadata: dict[str, Any]) -> None:
        """A saga is about to be stored (``start``/``enqueue``) with this ``metadata``."""
        ...

    def run_begins(self, run: SagaRun) -> None:
        """A run of ``run.record`` begins in this worker (first run, takeover or resume)."""
        ...

    def run_ends(self, run: SagaRun, outcome: str) -> None:
        """The run ended.

        ``outcome`` is the terminal status value, ``"parked"``, or ``"stopped"`` (shut
        down, lease lost, or an engine error: the saga stays resumable).
        """
        ...

    def attempt_begins(
        self, run: SagaRun, step: str, attempt: int, *, compensation: bool
    ) -> object:
        """An attempt of ``step`` (or of its compensation) is about to await user code.

        Returns:
            A token handed back to :meth:`attempt_ends`.
        """
        ...

    def attempt_ends(self, token: object, outcome: AttemptOutcome | None) -> None:
        """The attempt came to ``outcome`` (``None``: it was interrupted by a stop)."""
        ...


async def attempt_observed(
    hooks: EngineHooks,
    run: SagaRun,
    func: StepCallable,
    ctx: SagaContext,
    policy: RetryPolicy,
    task: asyncio.Task[Any],
    non_retryable: tuple[type[BaseException], ...],
    *,
    forward: bool,
) -> AttemptOutcome:
    """:func:`attempt_once`, between ``hooks.attempt_begins`` and ``hooks.attempt_ends``."""
    token = hooks.attempt_begins(run, ctx.step_name or "", ctx.attempt, compensation=not forward)
    outcome: AttemptOutcome | None = None
    try:
        outcome = await attempt_once(run, func, ctx, policy, task, non_retryable, forward=forward)
    finally:
        hooks.attempt_ends(token, outcome)
    return outcome
