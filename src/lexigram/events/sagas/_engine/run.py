"""``SagaRun``: the state of one saga this worker runs, and how a run is stopped.

``SagaRun.stop(reason)`` records the reason and cancels the tasks that are awaiting user
code (a step, a compensation, a retry delay) at that moment. Code that is persisting is
never cancelled: it finishes its write and the next checkpoint sees the reason. Cancel and
deadline stop only forward steps (compensations are shielded); shutdown and a lost lease
stop everything, without writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from enum import Enum
from typing import Any, Final

from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext
from lexigram.events.sagas.events import SagaEvent
from lexigram.events.sagas.types import SagaRecord, SagaWait

__all__ = ["BROKEN", "Interrupted", "SagaRun", "StopReason", "collect_task"]

logger = logging.getLogger(__name__)

_DEFAULT_CONFIG = SagaConfig()

BROKEN: Final = object()
"""``SagaRun.instance`` when the saga's factory raised: no step or compensation can run."""

_NONE: frozenset[Any] = frozenset()


class StopReason(Enum):
    """Why a run was asked to stop.

    ``CANCEL`` and ``DEADLINE`` are *soft*: they stop forward steps and the saga
    compensates (compensations are shielded). ``SHUTDOWN`` and ``LEASE_LOST`` are *hard*:
    they stop everything at once and nothing more is written. ``DRAIN`` (a worker leaving
    ``serve()``) is hard too, but interrupts nothing: the step or compensation running now
    finishes and is written, and the run stops at the next one; ``SHUTDOWN`` may still
    follow it.
    """

    CANCEL = "cancel"
    DEADLINE = "deadline"
    DRAIN = "drain"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"

    @property
    def is_hard(self) -> bool:
        """Whether the stop also applies to compensations (and leaves the saga resumable)."""
        return self is not StopReason.CANCEL and self is not StopReason.DEADLINE


class Interrupted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Unwinds a run that was stopped (cancel, deadline, shutdown, lost lease)."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class SagaRun:
    """One saga being run by this worker: its record, context and stop signal."""

    __slots__ = (
        "_save_lock",
        "cancelled_tasks",
        "config",
        "ctx",
        "finished",
        "flow",
        "in_user_code",
        "instance",
        "observed",
        "outbox",
        "outcome",
        "record",
        "resumed",
        "seq",
        "stop_message",
        "stop_reason",
        "task",
        "waiters",
        "worker_id",
    )

    def __init__(
        self,
        record: SagaRecord,
        flow: Flow,
        worker_id: str = "",
        config: SagaConfig = _DEFAULT_CONFIG,
    ) -> None:
        self.record = record
        self.flow = flow
        # The settings this saga runs with: its type's own, else its manager's.
        self.config = config if flow.config is None else flow.config
        self.worker_id = worker_id
        # One future per waiter, so that cancelling a waiter never touches the run.
        self.waiters: list[asyncio.Future[SagaRecord | None]] = []
        self.finished = False
        self.outcome: SagaRecord | None = None
        self.instance: object = None
        self.task: asyncio.Task[None] | None = None
        self.stop_reason: StopReason | None = None
        self.stop_message = ""
        # Tasks awaiting user code now -> whether a cancel/deadline may interrupt them.
        self.in_user_code: dict[asyncio.Task[Any], bool] = {}
        # Tasks this run cancelled and that have not absorbed the cancellation yet.
        self.cancelled_tasks: set[asyncio.Task[Any]] | frozenset[asyncio.Task[Any]] = _NONE
        self._save_lock: asyncio.Lock | None = None
        # Events waiting for the write that makes what they announce durable (only with
        # an event bus): published right after that write lands.
        self.outbox: list[SagaEvent] = []
        self.observed: object = None  # an observer's state for this run (a trace span)
        # The wait the saga was parked in when this run claimed it (``record.waiting`` is
        # cleared: every write of the run stores it as no longer parked).
        self.resumed: SagaWait | None = None
        if record.waiting is not None:
            self.resumed, record.waiting = record.waiting, None
        steps = record.steps
        self.seq = 1
        results: dict[str, dict[str, Any]] = {}
        if steps:  # a saga taken over or resumed (a fresh one has none)
            self.seq += max(
                (s.completion_seq for s in steps.values() if s.completion_seq is not None),
                default=0,
            )
            results = {
                name: step.output for name, step in steps.items() if step.completion_seq is not None
            }
        self.ctx = SagaContext(
            record.saga_id, record.saga_name, record.data, results, record.metadata
        )

    def log_extra(self, step: str | None = None, attempt: int | None = None) -> dict[str, Any]:
        """The structured fields every log record about this run carries (no payloads)."""
        record = self.record
        return log_fields(
            saga_id=record.saga_id,
            saga_name=record.saga_name,
            step=step,
            attempt=attempt,
            worker_id=self.worker_id,
        )

    def add_waiter(self) -> asyncio.Future[SagaRecord | None]:
        """Return a future resolved with the terminal record (``None``: the run stopped)."""
        waiter: asyncio.Future[SagaRecord | None] = asyncio.get_running_loop().create_future()
        if self.finished:
            waiter.set_result(self.outcome)
        else:
            self.waiters.append(waiter)
        return waiter

    def discard_waiter(self, waiter: asyncio.Future[SagaRecord | None]) -> None:
        """Forget a waiter that stopped waiting (timed out or cancelled).

        A waiter that got its result is already gone: ``finish`` empties the list.
        """
        if not waiter.done():
            waiter.cancel()
        if waiter.cancelled():  # a timeout or the caller's cancel: it stays in the list
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    def finish(self, outcome: SagaRecord | None) -> None:
        """Wake every waiter with the durable terminal record, or ``None`` if the run stopped."""
        if self.finished:
            return
        self.finished = True
        self.outcome = outcome
        result = outcome
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(result)
        self.waiters.clear()

    def stop(self, reason: StopReason, message: str = "") -> None:
        """Ask the run to stop; shutdown and lease loss override cancel and deadline.

        ``DRAIN`` cancels no user code (the step in flight finishes); a later ``SHUTDOWN``
        or ``LEASE_LOST`` overrides it.
        """
        current = self.stop_reason
        if current is not None and (
            not reason.is_hard or (current.is_hard and current is not StopReason.DRAIN)
        ):
            return
        self.stop_reason = reason
        self.stop_message = message
        if reason is StopReason.DRAIN:
            return
        hard = reason.is_hard
        for task, forward in self.in_user_code.items():
            if (forward or hard) and task not in self.cancelled_tasks:
                if not isinstance(self.cancelled_tasks, set):
                    self.cancelled_tasks = set()  # most runs are never stopped: no set
                self.cancelled_tasks.add(task)
                task.cancel()

    def owns_cancel(self, task: asyncio.Task[Any]) -> bool:
        """After ``CancelledError`` in user code: whether ``stop()`` alone caused it.

        When it did, the cancellation is consumed (the task's cancel count is restored) and
        the caller raises ``Interrupted``; otherwise the caller re-raises the error, since
        someone else is cancelling the task.
        """
        cancelled = self.cancelled_tasks
        if task not in cancelled or not isinstance(cancelled, set):
            return False
        cancelled.discard(task)
        return task.uncancel() == 0

    async def absorb_late_cancel(self, task: asyncio.Task[Any]) -> None:
        """Consume a ``stop()`` cancel that arrived as the user code finished.

        The user code's result stands and the next checkpoint sees the stop reason; the
        pending cancellation must not hit the engine's next write instead.
        """
        if isinstance(self.cancelled_tasks, set):
            self.cancelled_tasks.discard(task)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        if task.uncancel() > 0:
            raise asyncio.CancelledError

    async def call_user(
        self, awaitable: Awaitable[Any], task: asyncio.Task[Any], *, forward: bool
    ) -> Any:
        """Await user code in ``task`` (the current one) so that ``stop()`` can interrupt it.

        Raises:
            Interrupted: the run was stopped while the user code ran.
        """
        self.in_user_code[task] = forward
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if self.owns_cancel(task):
                raise Interrupted(self.stop_reason or StopReason.SHUTDOWN) from None
            raise
        finally:
            del self.in_user_code[task]
        if task in self.cancelled_tasks:
            await self.absorb_late_cancel(task)
        return result

    def checkpoint(self, *, forward: bool) -> None:
        """Raise ``Interrupted`` if a stop was requested that applies here."""
        reason = self.stop_reason
        if reason is not None and (forward or reason.is_hard):
            raise Interrupted(reason)

    def save_lock(self) -> asyncio.Lock:
        """The lock serialising this run's saves (needed once children save in parallel)."""
        if self._save_lock is None:
            self._save_lock = asyncio.Lock()
        return self._save_lock


def collect_task(task: asyncio.Task[None]) -> None:
    """Read how an engine task ended, so no exception is left "never retrieved".

    A run task ends with an exception only when the process is going down inside it (a
    ``BaseException`` such as ``SystemExit``, or ``testing.SimulatedCrash``): the saga is
    left as stored, like after a real crash, and this says so once.
    """
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        saga_id = task.get_name().removeprefix("saga:")
        logger.warning(
            "%s ended by %r; its saga stays as stored",
            task.get_name(),
            error,
            extra=log_fields(saga_id=saga_id if saga_id != task.get_name() else None),
        )
