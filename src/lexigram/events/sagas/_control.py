"""Controlling stored sagas: cancel (from any process), resume, recover, clean up.

Mixed into :class:`~lexigram.events.sagas._runtime.SagaRuntime`, whose state it uses.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from lexigram.events.sagas import events as ev
from lexigram.events.sagas._engine.engine import Engine, StopReason
from lexigram.events.sagas._engine.recovery import Recovery, RecoveryProblem
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import storable_text
from lexigram.events.sagas.errors import SagaNotFoundError
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import SagaRecord

__all__ = ["MAX_REASON_LENGTH", "ControlAPI"]

MAX_REASON_LENGTH = 2000
"""Longest cancel ``reason`` accepted (it is stored and shown to operators)."""

logger = logging.getLogger(__name__)


class ControlAPI:
    """``cancel``, ``resume``, ``recover`` and ``cleanup`` of a saga runtime."""

    _store: SagaStore
    _config: SagaConfig
    _clock: Callable[[], datetime]
    _engine: Engine
    _recovery: Recovery
    recovery_problems: builtins.list[RecoveryProblem]

    def _check_open(self) -> None:
        raise NotImplementedError

    def _begin_launch(self) -> None:
        raise NotImplementedError

    def _end_launch(self) -> None:
        raise NotImplementedError

    async def wait(self, saga_id: str, *, timeout: float | None = None) -> SagaRecord:
        raise NotImplementedError

    async def cancel(self, saga_id: str, *, reason: str = "cancelled by request") -> SagaRecord:
        """Cancel the saga, from any process; return its record.

        When this manager runs the saga, its step is stopped, the completed steps are
        compensated and the terminal record is returned. Otherwise the request is stored
        (it survives restarts) and the stored record is returned at once, with
        ``cancel_requested_at`` set: the worker holding the saga stops it within one
        heartbeat (at once where the store signals it), and a saga nobody holds is
        compensated by the next worker that claims it (``serve``, ``recover``). ``wait()``
        gives the outcome. A no-op on a terminal saga.

        Raises:
            SagaNotFoundError: no saga has this id.
            TypeError: ``reason`` is not a str.
            ValueError: ``reason`` is longer than ``MAX_REASON_LENGTH`` or holds a NUL.
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        if "\x00" in reason:
            raise ValueError("reason must not contain NUL characters")
        if len(reason) > MAX_REASON_LENGTH:
            raise ValueError(
                f"reason must be at most {MAX_REASON_LENGTH} characters, got {len(reason)}"
            )
        reason = storable_text(reason)
        run = self._engine.runs.get(saga_id)
        if run is not None:
            run.stop(StopReason.CANCEL, reason)
            return await self.wait(saga_id)
        self._check_open()
        record = await self._store.request_cancel(saga_id, reason)
        if record is None:
            raise SagaNotFoundError.for_id(saga_id)
        if not record.is_terminal:
            logger.info(
                "saga %s: cancel requested (%s)",
                saga_id,
                record.cancel_reason,
                extra=log_fields(saga_id=saga_id, saga_name=record.saga_name),
            )
            events = self._engine.events
            await events.emit(
                events.build(record, ev.SagaCancelRequested, reason=record.cancel_reason or "")
            )
        return record

    async def resume(self, saga_id: str) -> None:
        """Run a non-terminal saga from its last durable point in this worker.

        A parked saga whose wait has not ended is left parked (it resumes when its signal
        comes or its time is up, in whichever worker serves it).

        Raises:
            SagaNotFoundError: no saga has this id, or its name is not registered here.
            SagaLeaseError: another live worker holds the saga.
            SagaDefinitionError: the registered definition no longer matches its progress.
        """
        self._check_open()
        if saga_id in self._engine.runs:
            return
        self._begin_launch()
        try:
            record = await self._store.load(saga_id)
            if record is None:
                raise SagaNotFoundError.for_id(saga_id)
            if record.is_terminal or _still_parked(record, self._clock()):
                return
            claimed, flow = await self._recovery.take_over(record)
            self._engine.launch(claimed, flow)
        finally:
            self._end_launch()

    async def recover(self) -> int:
        """Claim and resume every non-terminal saga of a registered name no live worker holds.

        Sagas whose definition is not registered here, or no longer matches their recorded
        progress, are left untouched and listed in ``recovery_problems`` (and logged).
        Returns how many sagas were resumed.
        """
        self._check_open()
        self._begin_launch()
        try:
            resumed, self.recovery_problems = await self._recovery.recover()
        finally:
            self._end_launch()
        return resumed

    async def cleanup(self) -> int:
        """Delete terminal sagas older than ``cleanup_completed_after_hours``; return how many.

        Never touches a saga that is not terminal. With the setting at ``0``, keeps all.
        """
        hours = self._config.cleanup_completed_after_hours
        if hours == 0:
            return 0
        before = self._clock() - timedelta(hours=hours)
        total = 0
        while True:
            deleted = await self._store.delete_terminal(before=before, limit=1000)
            total += deleted
            if deleted < 1000:
                return total


def _still_parked(record: SagaRecord, now: datetime) -> bool:
    """Whether ``record`` is parked and not yet due (nor asked to cancel)."""
    return (
        record.waiting is not None
        and record.lease_owner is None
        and record.cancel_requested_at is None
        and record.not_before is not None
        and record.not_before > now
    )
