"""Running sagas as a service (SPEC section 11): enqueue from clients, serve in workers.

A client stores sagas nobody holds (:meth:`ServiceAPI.enqueue`); a worker's
:meth:`ServiceAPI.serve` loop claims them, never more than its free slots, oldest first,
together with sagas whose lease expired and sagas some process asked to cancel. It wakes
at once when the store signals new work (``SagaStore.wait_for_work``) or a slot frees, and
polls otherwise. :meth:`ServiceAPI.retry` redrives a ``FAILED`` saga.

Mixed into :class:`~lexigram.events.sagas._runtime.SagaRuntime`, whose state it uses.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from lexigram.events.sagas._engine.engine import Engine
from lexigram.events.sagas._engine.flow import Flow, align_cursor
from lexigram.events.sagas._engine.recovery import Recovery, RecoveryProblem
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._registry import Registry
from lexigram.events.sagas.codec import check_data, check_saga_id
from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.errors import (
    ConcurrencyConflictError,
    SagaDataError,
    SagaError,
    SagaNotFoundError,
    SagaStoreUnavailableError,
)
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import SagaRecord, SagaStatus, redrive_saga

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_POLL_INTERVAL", "ServiceAPI", "check_new"]

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 100
"""Sagas one ``serve()`` runs at once unless told otherwise."""

DEFAULT_POLL_INTERVAL = 1.0
"""Seconds between claims when the store signals nothing (expired leases, due sagas)."""

_REFUSED_FOR = 60.0  # seconds a saga whose definition does not match is passed over


def check_new(
    registry: Registry,
    name: object,
    data: Mapping[str, Any] | None,
    saga_id: str | None,
    correlation_id: str | None,
) -> tuple[Flow, dict[str, Any], str]:
    """Validate what ``start()``/``enqueue()`` were given; return flow, data and saga id.

    Raises:
        SagaNotFoundError: no saga is registered under ``name``.
        SagaDataError: ``data`` is not a JSON object, ``saga_id`` is not a valid id, or
            ``correlation_id`` is not a str.
    """
    flow = registry.flows.get(name) if isinstance(name, str) else None
    if flow is None:
        raise SagaNotFoundError.for_name(str(name))
    if data is not None and type(data) is not dict and isinstance(data, Mapping):
        data = dict(data)  # MappingProxyType, ChainMap...: what is stored is a dict
    payload = check_data(data)
    saga_id = str(uuid.uuid4()) if saga_id is None else check_saga_id(saga_id)
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise SagaDataError("correlation_id must be a str")
    return flow, payload, saga_id


class ServiceAPI:
    """``enqueue``, ``serve`` and ``retry``: the service layer of a saga runtime."""

    _store: SagaStore
    _config: SagaConfig
    _clock: Callable[[], datetime]
    _registry: Registry
    _engine: Engine
    _recovery: Recovery
    _closed: bool
    _serving: bool = False
    _wake_server: Callable[[], None] | None = None  # set while serve() runs
    recovery_problems: builtins.list[RecoveryProblem]

    def _check_open(self) -> None:
        raise NotImplementedError

    async def _drain(self, *, steps_only: bool = False) -> None:
        raise NotImplementedError

    def _begin_launch(self) -> None:
        raise NotImplementedError

    def _end_launch(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ clients

    async def enqueue(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        saga_id: str | None = None,
        *,
        correlation_id: str | None = None,
        not_before: datetime | None = None,
        connection: Any = None,
    ) -> str:
        """Durably store a new saga for a worker to run; run nothing here; return its id.

        Validates like ``start()``. The saga is stored ``PENDING`` with no lease, so any
        worker serving its name claims it (not before ``not_before``). Enqueueing an id
        that exists stores nothing and returns the id (idempotent). The saga's deadline
        counts from when a worker first runs it, not from now.

        Args:
            name: A registered saga (the client registers the definitions it enqueues).
            data: The saga's data (a JSON object).
            saga_id: The id to use (a UUID when omitted); the idempotency key of the call.
            correlation_id: Stored in the metadata (the saga id when omitted).
            not_before: No worker runs the saga before this time (timezone-aware).
            connection: An asyncpg connection of the caller (``PostgresSagaStore`` only):
                the saga is written in the caller's transaction, so it exists if and only
                if that transaction commits.

        Raises:
            SagaNotFoundError: no saga is registered under ``name``.
            SagaDataError: bad ``data``, ``saga_id`` or ``correlation_id``.
            TypeError: ``not_before`` is not a timezone-aware datetime, or ``connection``
                was given to a store that cannot write through it.
            SagaError: the manager is closed.
        """
        self._check_open()
        flow, payload, saga_id = check_new(self._registry, name, data, saga_id, correlation_id)
        if not_before is not None and (
            not isinstance(not_before, datetime) or not_before.utcoffset() is None
        ):
            raise TypeError("not_before must be a timezone-aware datetime")
        now = self._clock()
        record = SagaRecord(
            saga_id=saga_id,
            saga_name=name,
            data=payload,
            created_at=now,
            updated_at=now,
            metadata={"correlation_id": correlation_id or saga_id},
            current_step=flow.entry,
            not_before=not_before,
        )
        if self._engine.hooks is not None:
            self._engine.hooks.stamp(record.metadata)  # e.g. the caller's trace context
        try:
            if connection is None:
                await self._store.save(record)
            else:
                save_in = getattr(self._store, "save_in", None)
                if save_in is None:
                    raise TypeError(
                        f"{type(self._store).__name__} cannot enqueue through a connection "
                        "(transactional enqueue needs PostgresSagaStore)"
                    )
                await save_in(connection, record)
        except ConcurrencyConflictError:
            logger.debug(
                "saga %s already exists; enqueue is a no-op",
                saga_id,
                extra=log_fields(saga_id=saga_id, saga_name=name),
            )
        return saga_id

    async def retry(self, saga_id: str) -> SagaRecord:
        """Redrive a ``FAILED`` saga: compensate again every step not yet compensated.

        An operator's tool for a saga whose compensation gave up (after the cause was
        fixed). The saga returns to ``COMPENSATING`` with fresh compensation attempts and
        no lease, and a serving worker runs it (this manager too if it serves). The one
        exception to "terminal states never change"; ``record.redrives`` counts it.

        Returns:
            The stored record, now ``COMPENSATING``.

        Raises:
            SagaNotFoundError: no saga has this id.
            SagaError: the saga is not ``FAILED``, or failed with compensation disabled
                (nothing to redrive).
        """
        self._check_open()
        while True:
            record = await self._store.load(saga_id)
            if record is None:
                raise SagaNotFoundError.for_id(saga_id)
            if record.status is not SagaStatus.FAILED:
                raise SagaError(
                    f"saga '{saga_id}' is {record.status.value}: only a failed saga can be retried",
                    saga_id=saga_id,
                )
            try:
                redrive_saga(record, self._clock())
            except ValueError as exc:
                raise SagaError(str(exc), saga_id=saga_id) from None
            try:
                await self._store.save(record)
            except ConcurrencyConflictError:
                continue  # changed under us (another retry): look again
            logger.info(
                "saga %s redriven (redrive %d)",
                saga_id,
                record.redrives,
                extra=log_fields(saga_id=saga_id, saga_name=record.saga_name),
            )
            return record

    # ------------------------------------------------------------------ workers

    async def serve(
        self,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        stop: asyncio.Event | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        """Run as a worker: claim and run sagas of the registered names until stopped.

        Claims enqueued sagas, sagas whose worker died (expired lease) and sagas asked to
        cancel, oldest first, never more than the free slots (``concurrency`` minus the
        sagas running here) nor more than a name's ``max_concurrency``. Wakes at once when
        the store signals new work or a saga here finishes; otherwise claims every
        ``poll_interval`` seconds. Cancel requests for sagas running here are honoured as
        soon as the store signals them (and at every heartbeat).

        Returns when ``stop`` is set or the manager is closed, after the sagas running here
        finished or, past ``shutdown_timeout``, were stopped and released.

        Raises:
            ValueError: ``concurrency`` is not a positive int or ``poll_interval`` is not
                a positive number.
            SagaError: the manager is closed, already serving, or has no saga registered.
        """
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        if (
            not isinstance(poll_interval, int | float)
            or isinstance(poll_interval, bool)
            or not 0 < poll_interval < float("inf")
        ):
            raise ValueError(f"poll_interval must be a positive number, got {poll_interval!r}")
        self._check_open()
        if self._serving:
            raise SagaError("serve() is already running on this manager")
        if not self._registry.flows:
            raise SagaError("serve() needs at least one registered saga to run")
        self._serving = True
        try:
            await _Server(self, concurrency, poll_interval).run(stop)
        finally:
            self._serving = False


class _Server:
    """The state of one ``serve()`` call."""

    def __init__(self, api: ServiceAPI, concurrency: int, poll_interval: float) -> None:
        self._api = api
        self._engine = api._engine
        self._concurrency = concurrency
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._signalled = False  # the store signalled (maybe a cancel request)
        self._refused: dict[str, float] = {}  # saga id -> monotonic time to try again
        self._uncertain = False  # a claim failed in a way that may have landed

    async def run(self, stop: asyncio.Event | None) -> None:
        engine = self._engine
        previous, engine.on_run_end = engine.on_run_end, self._wake.set
        self._api._wake_server = self._wake.set  # close() wakes the loop at once
        watcher = asyncio.create_task(self._watch_store(), name="saga-serve-watch")
        stopper = None if stop is None else asyncio.create_task(self._watch_stop(stop))
        logger.info(
            "serving %s (concurrency %d)",
            ", ".join(self._api._registry.flows) or "nothing",
            self._concurrency,
            extra=log_fields(worker_id=engine.worker_id),
        )
        try:
            while not self._stopping(stop):
                if self._signalled:
                    self._signalled = False
                    await engine.check_cancel_requests()
                await self._claim_once()
                # A slot freed or a sign of work while claiming set it already: no gap.
                await self._wake.wait()
                self._wake.clear()
        finally:
            watcher.cancel()
            if stopper is not None:
                stopper.cancel()
            engine.on_run_end = previous
            self._api._wake_server = None
            await self._api._drain(steps_only=True)  # also when serve() is cancelled

    def _stopping(self, stop: asyncio.Event | None) -> bool:
        return self._api._closed or (stop is not None and stop.is_set())

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _watch_store(self) -> None:
        store = self._api._store
        while True:
            try:
                signalled = await store.wait_for_work(self._poll)
            except Exception:
                logger.warning(
                    "waiting for work failed; polling",
                    exc_info=True,
                    extra=log_fields(worker_id=self._engine.worker_id),
                )
                await asyncio.sleep(self._poll)
                signalled = False
            self._signalled = self._signalled or signalled
            self._wake.set()

    def _batches(self, free: int) -> builtins.list[tuple[builtins.list[str], int]]:
        """What to claim now: ``(names, limit)`` pairs within the free slots and the caps.

        A capped name is claimed on its own, up to what its cap leaves, before the names
        without ``max_concurrency``, which share one claim of the slots left. (Oldest first
        holds within each claim, not across capped and uncapped names.)
        """
        flows = self._api._registry.flows
        caps = self._api._registry.max_concurrency
        if not caps:
            return [(builtins.list(flows), free)]
        running = Counter(run.record.saga_name for run in self._engine.runs.values())
        # Capped names first, within their caps: claimed after the others, they would get
        # no slot for as long as the uncapped names have a backlog.
        batches = [
            ([name], min(free, cap - running[name]))
            for name, cap in caps.items()
            if name in flows and running[name] < cap
        ]
        batches.append(([name for name in flows if name not in caps], free))
        return [(names, limit) for names, limit in batches if names and limit > 0]

    async def _claim_once(self) -> None:
        """Claim up to the free slots (and caps) and launch what was claimed."""
        engine = self._engine
        free = self._concurrency - len(engine.runs)
        if free <= 0:
            return
        now = time.monotonic()
        self._refused = {k: until for k, until in self._refused.items() if until > now}
        if self._uncertain:  # a claim of ours may have landed: adopt what it stranded
            try:
                await self._api._recovery.adopt_stranded(self._api.recovery_problems)
            except Exception as exc:
                logger.warning(
                    "adopting sagas after a failed claim failed (%s); retrying",
                    exc,
                    extra=log_fields(worker_id=engine.worker_id),
                )
                await asyncio.sleep(self._poll)
                return
            self._uncertain = False
        for names, limit in self._batches(free):
            limit = min(limit, self._concurrency - len(engine.runs))
            if limit <= 0:
                return
            self._api._begin_launch()  # close() waits for what this claim brings
            try:
                if not await self._claim_batch(names, limit):
                    await asyncio.sleep(self._poll)
                    return
            finally:
                self._api._end_launch()

    async def _claim_batch(self, names: builtins.list[str], limit: int) -> bool:
        """Claim one batch and launch it; ``False`` when the claim failed (logged)."""
        engine = self._engine
        try:
            claimed = await self._api._store.claim(
                engine.worker_id,
                engine.lease_id,
                lease_seconds=engine.lease.seconds,
                saga_names=names,
                limit=limit,
                exclude=builtins.list(self._refused),
            )
        except Exception as exc:  # the loop never dies: it claims again next round
            # An outage may hide a claim that landed: adopt what it stranded next time.
            if isinstance(exc, SagaStoreUnavailableError | OSError):
                self._uncertain = True
                self._api._recovery.note_lost_claim()
            logger.warning(
                "claiming failed (%s); retrying in %.2fs",
                exc,
                self._poll,
                exc_info=not self._uncertain,
                extra=log_fields(worker_id=engine.worker_id),
            )
            return False
        for record in claimed:
            await self._launch(record)
        return True

    async def _launch(self, record: SagaRecord) -> None:
        engine = self._engine
        if self._api._closed:  # claimed while the manager closed: hand it straight back
            await self._release(record)
            return
        try:
            flow = self._api._recovery.resumable(record)
        except SagaError as error:
            self._refuse(record, error)
            await self._release(record)
            return
        align_cursor(flow, record)
        engine.launch(record, flow)

    async def _release(self, record: SagaRecord) -> None:
        engine = self._engine
        try:
            await engine.store.release(record.saga_id, engine.worker_id, engine.lease_id)
        except Exception as exc:  # its lease expires anyway: another worker takes it then
            logger.warning(
                "could not release saga %s (%s)",
                record.saga_id,
                exc,
                extra=log_fields(saga_id=record.saga_id, worker_id=engine.worker_id),
            )

    def _refuse(self, record: SagaRecord, error: SagaError) -> None:
        """Leave a saga this worker cannot run to others (released, passed over a while)."""
        self._refused[record.saga_id] = time.monotonic() + _REFUSED_FOR
        problems = self._api.recovery_problems
        problems[:] = [p for p in problems if p.saga_id != record.saga_id]  # one per saga
        problems.append(RecoveryProblem(record.saga_id, record.saga_name, error))
        logger.warning(
            "serve(): saga %s (%s) left to other workers: %s",
            record.saga_id,
            record.saga_name,
            error,
            extra=log_fields(
                saga_id=record.saga_id,
                saga_name=record.saga_name,
                worker_id=self._engine.worker_id,
            ),
        )
