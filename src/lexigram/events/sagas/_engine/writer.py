"""Writing a run's record: retries while the store is down, conflicts, rejected values.

Every persistence point of the engine goes through :meth:`RecordWriter.save`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from lexigram.events.sagas._engine.rules import describe_error
from lexigram.events.sagas._engine.run import Interrupted, SagaRun, StopReason
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.errors import (
    ConcurrencyConflictError,
    SagaDataError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import SagaRecord

__all__ = ["RecordWriter"]

_NOTHING_REJECTED: list[str] = []  # shared and never mutated: callers only test it

logger = logging.getLogger(__name__)


class RecordWriter:
    """Writes run records to a store on behalf of the engine."""

    def __init__(self, store: SagaStore, config: SagaConfig, clock: Callable[[], datetime]):
        self.store = store
        self.config = config
        self.clock = clock
        self._lease = timedelta(seconds=config.lease_seconds)

    async def save(
        self, run: SagaRun, *, terminal: bool = False, commit: bool = False
    ) -> list[str]:
        """Write the run's record durably; return the data keys the store rejected.

        With ``commit`` (a step completion), rejected values are put back to their last
        durable state and nothing is written: the caller fails the step. Otherwise the
        record is written again without them.
        """
        record = run.record
        if not terminal and not self.config.persist_state:
            return []
        now = self.clock()
        record.updated_at = now
        record.recovery_attempts = 0
        if terminal:
            record.lease_owner = record.lease_id = record.lease_expires_at = None
        else:
            record.lease_expires_at = now + self._lease
        lock = run._save_lock  # created once a parallel group runs
        if lock is None:
            try:  # the common case, without a further coroutine layer
                await self.store.save(record)
            except Exception as exc:
                return await self.write(run, commit=commit, failed=exc)
            return _NOTHING_REJECTED
        async with lock:
            return await self.write(run, commit=commit)

    async def write(
        self, run: SagaRun, *, commit: bool, failed: Exception | None = None
    ) -> list[str]:
        """Save until the write lands, handling conflicts, outages and rejected values.

        ``failed`` is the error of a first attempt the caller already made.
        """
        record = run.record
        delay = 0.05
        uncertain = False
        rejected: list[str] = []
        while True:
            try:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                await self.store.save(record)
            except ConcurrencyConflictError:
                if uncertain and await self._landed(record):
                    record.version += 1
                    return rejected
                logger.warning(
                    "saga %s was taken over by another worker; this worker stops running it",
                    record.saga_id,
                )
                run.stop(StopReason.LEASE_LOST)
                raise Interrupted(StopReason.LEASE_LOST) from None
            except SagaDataError as exc:
                rejected += await self._scrub(run, exc)
                if commit or not exc.keys:
                    return rejected or ["(metadata)"]
                continue
            except (SagaStoreUnavailableError, OSError) as exc:
                uncertain = True
                if run.stop_reason is not None and run.stop_reason.is_hard:
                    raise Interrupted(run.stop_reason) from None
                logger.warning(
                    "saga %s: store unavailable (%s); retrying in %.2fs",
                    record.saga_id,
                    describe_error(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            return rejected

    async def _landed(self, record: SagaRecord) -> bool:
        """After an ambiguous failure, tell whether our write reached the store after all."""
        try:
            stored = await self.store.load(record.saga_id)
        except Exception:
            return False
        return (
            stored is not None
            and stored.version == record.version + 1
            and stored.updated_at == record.updated_at
            and stored.lease_id == record.lease_id
            and stored.status == record.status
        )

    async def _scrub(self, run: SagaRun, exc: SagaDataError) -> list[str]:
        """Put back the last durable value of data keys the store rejected; drop bad outputs."""
        record = run.record
        data_keys = [key for key in exc.keys if not key.startswith("step:")]
        for key in exc.keys:
            if key.startswith("step:") and key[5:] in record.steps:
                record.steps[key[5:]].output = {}
        if data_keys:
            durable = await self.store.load(record.saga_id)
            previous = {} if durable is None else durable.data
            for key in data_keys:
                if key in previous:
                    record.data[key] = previous[key]
                else:
                    record.data.pop(key, None)
        logger.warning(
            "saga %s: values at %s are not JSON-serialisable and were not stored",
            record.saga_id,
            ", ".join(exc.keys) or "(metadata)",
        )
        return list(exc.keys)
