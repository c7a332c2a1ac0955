"""Lifecycle events of runs: built once, published only when what they say is durable.

``queue`` holds an event on the run until the next write lands (the writer flushes
``run.outbox``); ``publish`` sends at once, for callers that just wrote, and for the two
events about what is starting now (``SagaStarted``/``SagaResumed`` at launch, when the
saga is stored and held, and ``SagaStepStarted`` before each attempt). Without a bus
nothing is built. A failing bus never breaks a saga.
"""

from __future__ import annotations

import logging
from typing import Any

from lexigram.events._bus import EventBusProtocol
from lexigram.events.sagas import events as ev
from lexigram.events.sagas._engine.run import SagaRun
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["Announcer"]

logger = logging.getLogger(__name__)


class Announcer:
    """Builds and publishes the saga lifecycle events of one worker."""

    def __init__(self, bus: EventBusProtocol | None, worker_id: str) -> None:
        self.bus = bus
        self._worker_id = worker_id

    def queue(
        self, run: SagaRun, event_type: type[ev.SagaEvent], step: str | None = None, **f: Any
    ) -> ev.SagaEvent | None:
        """Publish an event once the next write lands (the state it announces is durable).

        Returns the queued event (``None`` without a bus), so a caller may withdraw it.
        """
        if self.bus is None:
            return None
        event = self.build(run.record, event_type, step, **f)
        run.outbox.append(event)
        return event

    async def publish(
        self, run: SagaRun, event_type: type[ev.SagaEvent], step: str | None = None, **f: Any
    ) -> None:
        """Publish an event now (callers make sure what it announces is durable)."""
        if self.bus is not None:
            await self.emit(self.build(run.record, event_type, step, **f))

    async def launched(self, run: SagaRun) -> None:
        """``SagaStarted`` for a saga's first run, ``SagaResumed`` for a takeover.

        The saga is durable already (stored by ``start``/``enqueue``, or claimed). A saga
        still ``PENDING`` that another worker held before is a takeover too, so
        ``SagaStarted`` goes out once per saga (unless a worker released the saga before
        its first step completed, e.g. on shutdown).
        """
        record = run.record
        if record.status is SagaStatus.PENDING and record.previous_owner is None:
            await self.publish(run, ev.SagaStarted)
        else:
            await self.publish(
                run,
                ev.SagaResumed,
                previous_owner=record.previous_owner,
                recovery_attempts=record.recovery_attempts,
            )

    async def emit(self, event: ev.SagaEvent) -> None:
        """Publish a built event; log (never raise) when the bus fails."""
        bus = self.bus
        if bus is None:
            return
        try:
            await bus.publish(event)
        except Exception:  # a failing bus never breaks a saga
            logger.warning(
                "saga %s: publishing %s failed",
                event.saga_id,
                type(event).__name__,
                exc_info=True,
                extra=log_fields(
                    saga_id=event.saga_id, saga_name=event.saga_name, worker_id=self._worker_id
                ),
            )

    def build(
        self,
        record: SagaRecord,
        event_type: type[ev.SagaEvent],
        step: str | None = None,
        **fields: Any,
    ) -> ev.SagaEvent:
        """An event about ``record``, published by this worker."""
        return event_type(
            saga_id=record.saga_id,
            saga_name=record.saga_name,
            correlation_id=record.correlation_id,
            step_name=step,
            worker_id=self._worker_id,
            **fields,
        )
