"""Writing a run's record: retries while the store is down, conflicts, rejected values.

Every persistence point of the engine goes through :meth:`RecordWriter.save`. Three rules:

- **A write is never skipped silently.** It lands, or the run stops (lease lost,
  shutdown), or ``save`` returns the values the store refused; nothing else.
- **A refused value is put back, never the rest.** When the store refuses values (a
  ``SagaDataError`` naming them), each is restored to its last durable value (or dropped),
  nothing is written, and the caller fails the step that produced them and writes again.
  Values already stored are never touched.
- **Events follow the write.** Events queued on the run (``run.outbox``) are published
  right after the next write lands, so no event announces a state the store does not have.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from lexigram.events.sagas._engine.backoff import STORE_RETRY
from lexigram.events.sagas._engine.rules import describe_error
from lexigram.events.sagas._engine.run import Interrupted, SagaRun, StopReason
from lexigram.events.sagas._leases import LeasePolicy
from lexigram.events.sagas.codec import normalise_json
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import storable_text
from lexigram.events.sagas.errors import (
    ConcurrencyConflictError,
    Rejection,
    SagaDataError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.events import SagaEvent
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import (
    SagaFailure,
    SagaRecord,
    SagaStatus,
    finish_saga,
    unfinish_saga,
)

__all__ = ["RecordWriter", "describe_rejections"]

logger = logging.getLogger(__name__)

_NONE: tuple[Rejection, ...] = ()
_NO_EVENTS: list[SagaEvent] = []  # shared and never changed: only iterated and tested


def describe_rejections(rejections: tuple[Rejection, ...]) -> str:
    """``"data key 'x', output of step 'y'"``: what a store refused, for error messages."""
    return storable_text(", ".join(str(item) for item in rejections))


class RecordWriter:
    """Writes run records to a store on behalf of the engine."""

    def __init__(
        self,
        store: SagaStore,
        config: SagaConfig,
        clock: Callable[[], datetime],
        lease: LeasePolicy,
        *,
        sleep: Callable[[float], Awaitable[Any]],
        publish: Callable[[SagaEvent], Awaitable[None]],
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.lease = lease
        self._lease_length = lease.length
        self._sleep = sleep
        self._publish = publish

    async def save(
        self, run: SagaRun, *, finish: SagaStatus | None = None, park: bool = False
    ) -> tuple[Rejection, ...]:
        """Write the run's record durably; with ``finish``, as that terminal status.

        With ``park``, the write also hands the lease back (the saga waits, see
        ``record.waiting``): it is made whatever ``persist_state`` says, and after it
        lands the run must write nothing more.

        Returns:
            The values the store refused, after putting each back to its last durable
            value; nothing was written then, and the caller must record the failure and
            save again. Empty when the write landed.

        Raises:
            Interrupted: the lease was lost, or a hard stop came while the store was down.
        """
        record = run.record
        ctx = run.ctx
        if ctx.data is not record.data or ctx.metadata is not record.metadata:
            refused = _adopt_context(run)
            if refused:
                return refused
        if finish is None and not park and not run.config.persist_state:
            if run.outbox:
                await self._flush(run)
            return _NONE
        now = self.clock()
        record.updated_at = now
        record.recovery_attempts = 0
        unfinished = None
        if finish is not None:
            unfinished = finish_saga(record, finish, now)
        elif park:
            unfinished = (record.lease_owner, record.lease_id, record.lease_expires_at)
            record.lease_owner = record.lease_id = record.lease_expires_at = None
        else:
            record.lease_expires_at = now + self._lease_length
        # The events queued so far announce what this write stores; events queued while it
        # is under way (by parallel siblings) wait for the next write.
        events: list[SagaEvent] = _NO_EVENTS
        try:
            lock = run._save_lock  # created once a parallel group runs
            if lock is None:
                if run.outbox:
                    events, run.outbox = run.outbox, []
                try:  # the common case, without a further coroutine layer
                    await self.store.save(record)
                except Exception as exc:
                    await self._write(run, failed=exc)
            else:
                async with lock:
                    if run.outbox:
                        events, run.outbox = run.outbox, []
                    await self._write(run)
        except BaseException as exc:
            if events:
                run.outbox[:0] = events  # not written: they still wait for a write
            if not isinstance(exc, SagaDataError):
                raise
            if park:  # nothing was written: the lease is still held
                record.lease_owner, record.lease_id, _ = unfinished or (None, None, None)
                record.lease_expires_at = self.lease.expiry(now)
            elif unfinished is not None:  # nothing was written, so the saga did not finish
                unfinish_saga(record, unfinished)
                record.lease_expires_at = self.lease.expiry(now)
            refused = await self._repair(run, exc)
            if refused:
                return refused
            return await self.save(run, finish=finish, park=park)  # values reshaped
        for event in events:
            await self._publish(event)
        return _NONE

    async def _write(self, run: SagaRun, *, failed: Exception | None = None) -> None:
        """Save until the write lands; ``failed`` is the error of a first attempt made.

        Raises:
            SagaDataError: the store refused values (nothing was written).
            Interrupted: the lease was lost, or a hard stop came while the store was down.
        """
        record = run.record
        uncertain = False
        outages = 0
        while True:
            try:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                await self.store.save(record)
            except ConcurrencyConflictError:
                if uncertain and await self._landed(record):
                    record.version += 1
                    return
                logger.warning(
                    "saga %s was taken over by another worker; this worker stops running it",
                    record.saga_id,
                    extra=run.log_extra(run.ctx.step_name, run.ctx.attempt or None),
                )
                run.stop(StopReason.LEASE_LOST)
                raise Interrupted(StopReason.LEASE_LOST) from None
            except (SagaStoreUnavailableError, OSError) as exc:
                uncertain = True
                if run.stop_reason is not None and run.stop_reason.is_hard:
                    raise Interrupted(run.stop_reason) from None
                outages += 1
                delay = STORE_RETRY.delay(outages)
                logger.warning(
                    "saga %s: store unavailable (%s); retrying in %.2fs",
                    record.saga_id,
                    describe_error(exc),
                    delay,
                    extra=run.log_extra(run.ctx.step_name, run.ctx.attempt or None),
                )
                await self._sleep(delay)
                continue
            return

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

    async def _repair(self, run: SagaRun, exc: SagaDataError) -> tuple[Rejection, ...]:
        """Put each refused value back to its last durable state; return what was refused.

        A value that only holds tuples where a store keeps lists is not refused: it is
        turned into what the store would give back, so worker and store agree, and the
        write is made again (an empty result).

        Raises:
            SagaDataError: the store named no value, so nothing can be repaired: the run
                stops (it stays resumable) rather than loop or skip the write.
        """
        rejections = tuple(item for item in exc.rejections if not _normalise(run, item))
        if not exc.rejections:
            raise exc
        if not rejections:
            return rejections
        record = run.record
        durable: SagaRecord | None = None
        if any(item.kind in ("data", "metadata") for item in rejections):
            durable = await self.store.load(record.saga_id)
        for item in rejections:
            if item.kind == "data":
                _restore(record.data, item.key, None if durable is None else durable.data)
            elif item.kind == "metadata":
                _restore(record.metadata, item.key, None if durable is None else durable.metadata)
            elif item.kind == "output":
                step = record.steps.get(item.key)
                if step is not None:
                    step.output = {}
                run.ctx.step_results.pop(item.key, None)
            else:
                _clean_texts(record, item.key)
        logger.warning(
            "saga %s: the store refused %s; put back to the last stored values",
            record.saga_id,
            describe_rejections(rejections),
            extra=run.log_extra(run.ctx.step_name, run.ctx.attempt or None),
        )
        return rejections

    async def _flush(self, run: SagaRun) -> None:
        events, run.outbox = run.outbox, []
        for event in events:
            await self._publish(event)


def _normalise(run: SagaRun, item: Rejection) -> bool:
    """Make a refused value storable by giving it the shape a store gives back, if it can."""
    record = run.record
    if item.kind == "output":
        step = record.steps.get(item.key)
        if step is None:
            return False
        try:
            step.output = normalise_json(step.output)
        except (TypeError, ValueError, RecursionError):
            return False
        if item.key in run.ctx.step_results:
            run.ctx.step_results[item.key] = step.output
        return True
    if item.kind not in ("data", "metadata"):
        return False
    target: dict[Any, Any] = record.data if item.kind == "data" else record.metadata
    if item.key not in target:  # a non-str key (named by its text), or the whole dict
        return False
    try:
        target[item.key] = normalise_json(target[item.key])
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _adopt_context(run: SagaRun) -> tuple[Rejection, ...]:
    """Make the record hold the dicts the context holds (a step may assign ``ctx.data``)."""
    ctx = run.ctx
    record = run.record
    refused: list[Rejection] = []
    data: object = ctx.data
    if isinstance(data, dict):
        record.data = ctx.data
    else:
        ctx.data = record.data
        refused.append(Rejection("data", ""))
    metadata: object = ctx.metadata
    if isinstance(metadata, dict):
        record.metadata = ctx.metadata
    else:
        ctx.metadata = record.metadata
        refused.append(Rejection("metadata", ""))
    return tuple(refused)


def _restore(target: dict[Any, Any], key: str, durable: dict[str, Any] | None) -> None:
    """Put ``target[key]`` back to its durable value, or drop it.

    ``key`` may stand for a non-str key, named by its text.
    """
    for present in [present for present in target if str(present) == key]:
        del target[present]
    if durable is not None and key in durable:
        target[key] = durable[key]


def _clean_texts(record: SagaRecord, step_name: str) -> None:
    """Make the error texts of a step (or of the saga) valid UTF-8."""
    if not step_name:
        if record.error is not None:
            record.error = _valid_text(record.error)
        failure = record.failure
        if failure is not None:
            record.failure = SagaFailure(failure.kind, failure.step, _valid_text(failure.message))
        return
    step = record.steps.get(step_name)
    if step is None:
        return
    step.error = None if step.error is None else _valid_text(step.error)
    step.compensation_error = (
        None if step.compensation_error is None else _valid_text(step.compensation_error)
    )
    step.attempt_errors = [_valid_text(text) for text in step.attempt_errors]


def _valid_text(text: object) -> str:
    return storable_text(str(text))
