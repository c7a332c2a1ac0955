"""The heartbeat: one task per worker renewing the leases of every saga it runs.

It renews every ``lease_seconds / 3`` (``LeasePolicy.heartbeat_interval``) in one store
call, stops a run whose lease another worker took, and ends by itself when a tick finds no
saga running (the next launch starts it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from lexigram.events.sagas._engine.run import SagaRun, StopReason
from lexigram.events.sagas._leases import LeasePolicy
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas.store import SagaStore

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)


class Heartbeat:
    """Keeps the leases of ``runs`` alive while any of them runs."""

    def __init__(
        self,
        store: SagaStore,
        lease: LeasePolicy,
        *,
        worker_id: str,
        lease_id: str,
        runs: Mapping[str, SagaRun],
        on_done: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._store = store
        self._lease = lease
        self._worker_id = worker_id
        self._lease_id = lease_id
        self._runs = runs
        self._on_done = on_done
        self._task: asyncio.Task[None] | None = None

    def ensure(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start beating unless already beating."""
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._beat(), name="saga-heartbeat")
            self._task.add_done_callback(self._on_done)

    async def close(self) -> None:
        """Stop beating (the runs must be finished or stopped)."""
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check_cancel_requests(self) -> None:
        """Stop the runs some process asked to cancel (``cancel()`` stores the request)."""
        if not self._runs:
            return
        try:
            asked = await self._store.cancel_requests(self._worker_id, self._lease_id)
        except Exception:
            logger.warning(
                "reading cancel requests failed; retrying at the next beat",
                exc_info=True,
                extra=log_fields(worker_id=self._worker_id),
            )
            return
        for saga_id, reason in asked.items():
            run = self._runs.get(saga_id)
            if run is not None:
                run.stop(StopReason.CANCEL, reason or "cancelled by request")

    async def _beat(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._lease.heartbeat_interval)
                ids = list(self._runs)
                if not ids:
                    break
                try:
                    held = set(
                        await self._store.renew(
                            self._worker_id, self._lease_id, ids, lease_seconds=self._lease.seconds
                        )
                    )
                except Exception:
                    logger.warning(
                        "lease renewal failed; retrying",
                        exc_info=True,
                        extra=log_fields(worker_id=self._worker_id),
                    )
                    continue
                for saga_id in ids:
                    run = self._runs.get(saga_id)
                    if (
                        saga_id not in held
                        and run is not None
                        and not run.record.is_terminal
                        and run.record.waiting is None  # parked: it handed the lease back
                    ):
                        logger.warning(
                            "saga %s: lease lost to another worker", saga_id, extra=run.log_extra()
                        )
                        run.stop(StopReason.LEASE_LOST)
                await self.check_cancel_requests()
        finally:
            self._task = None
