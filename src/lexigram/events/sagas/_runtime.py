"""The API both front-ends share: start, wait, execute, get, list, cancel, resume, recover.

``SagaManager`` and ``SagaOrchestrator`` subclass :class:`SagaRuntime`; each only adds the
way it turns a user definition into a :class:`~lexigram.events.sagas._engine.flow.Flow`
(``register`` / ``define``). Everything that runs a saga is in the engine.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from lexigram.events._bus import EventBusProtocol
from lexigram.events._domain import DomainEvent
from lexigram.events.sagas._control import ControlAPI
from lexigram.events.sagas._engine.engine import Engine, StopReason
from lexigram.events.sagas._engine.flow import Flow
from lexigram.events.sagas._engine.recovery import Recovery, RecoveryProblem
from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._registry import Registry
from lexigram.events.sagas._service import ServiceAPI, check_new
from lexigram.events.sagas._signals import SignalAPI
from lexigram.events.sagas._subscriptions import Subscriptions, starter
from lexigram.events.sagas.codec import MAX_SAGA_ID_LENGTH
from lexigram.events.sagas.config import SagaConfig, check_list_limit, check_list_offset
from lexigram.events.sagas.errors import (
    ConcurrencyConflictError,
    SagaError,
    SagaNotFoundError,
    SagaTimeoutError,
)
from lexigram.events.sagas.store import InMemorySagaStore, SagaStore
from lexigram.events.sagas.types import SagaRecord, SagaStatus

__all__ = ["MAX_SAGA_ID_LENGTH", "RecoveryProblem", "SagaRuntime"]

logger = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SagaRuntime(ServiceAPI, ControlAPI, SignalAPI):
    """Runs registered sagas in this process, as one worker sharing a store with others.

    A runtime is a client (``enqueue``, ``cancel``, ``retry``, ``get``, ``wait``), a
    worker (``serve``), or both; ``start`` stores a saga and runs it here at once.

    Args:
        store: Where saga state lives; a fresh ``InMemorySagaStore`` when omitted.
        config: Timeouts, retries, leases; ``SagaConfig()`` when omitted.
        event_bus: Receives the saga lifecycle events, when given.
        worker_id: This worker's name in leases (host-pid-random when omitted). A worker
            restarted under the same name takes its earlier incarnation's sagas at once.
        clock: Returns the current UTC time (inject one in tests).
        sleep: Awaited for every retry delay (``asyncio.sleep`` by default); pass
            ``lexigram.events.sagas.testing.NoWaits()`` in tests to skip every wait.
    """

    def __init__(
        self,
        store: SagaStore | None = None,
        *,
        config: SagaConfig | None = None,
        event_bus: EventBusProtocol | None = None,
        worker_id: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if config is not None and not isinstance(config, SagaConfig):
            raise TypeError(f"config must be a SagaConfig, got {type(config).__name__}")
        if worker_id is not None and (
            not isinstance(worker_id, str) or not worker_id.strip() or not worker_id.isprintable()
        ):
            raise ValueError("worker_id must be a non-empty string of printable characters")
        self._store: SagaStore = store if store is not None else InMemorySagaStore()
        self._config = config if config is not None else SagaConfig()
        self._bus = event_bus
        self._clock = clock
        self._registry = Registry()
        self._timeout_delta = timedelta(seconds=self._config.default_timeout_seconds)
        self._subscriptions = None if event_bus is None else Subscriptions(event_bus)
        self._starting: set[str] = set()  # ids whose start() is storing them right now
        # Calls that may launch a run (start, cancel, resume, recover) in progress: close()
        # waits for them, so a saga they store or claim is launched, then stopped with the
        # rest, never left under this worker's lease.
        self._launching = 0  # calls storing or claiming a saga to launch (close() waits)
        self._idle: asyncio.Future[None] | None = None  # set when they are done, if awaited
        self._closed = False
        self._engine = Engine(
            self._store,
            self._config,
            event_bus=event_bus,
            worker_id=worker_id or _default_worker_id(),
            lease_id=uuid.uuid4().hex,
            clock=clock,
            sleep=sleep,
        )
        self._recovery = Recovery(self._engine, self._registry.flows, self._starting)
        self.recovery_problems: builtins.list[RecoveryProblem] = []
        """What the last ``recover()`` found but left untouched (unknown or changed definitions)."""

    # ------------------------------------------------------------------ properties

    @property
    def store(self) -> SagaStore:
        """The store this worker reads and writes."""
        return self._store

    @property
    def config(self) -> SagaConfig:
        """The configuration every saga of this worker runs with."""
        return self._config

    @property
    def worker_id(self) -> str:
        """This worker's name in leases."""
        return self._engine.worker_id

    @property
    def event_bus(self) -> EventBusProtocol | None:
        """The bus lifecycle events are published on, if any."""
        return self._bus

    @property
    def registered(self) -> tuple[str, ...]:
        """The names of the registered sagas."""
        return tuple(self._registry.flows)

    def running(self) -> tuple[str, ...]:
        """Ids of the sagas this worker is running now."""
        return tuple(self._engine.runs)

    def flow(self, saga_name: str) -> Flow:
        """Return the compiled definition registered under ``saga_name``."""
        return self._registry.get(saga_name)

    def _add_flow(
        self,
        flow: Flow,
        source: object,
        max_concurrency: int | None = None,
        config: SagaConfig | None = None,
    ) -> Flow:
        """Register a compiled flow (front-ends call this); return it as registered."""
        if config is not None:
            flow = dataclasses.replace(flow, config=config)
        self._registry.add(flow, source, max_concurrency)
        return self._registry.flows[flow.name]

    @staticmethod
    def _type_config(config: object) -> SagaConfig | None:
        if config is not None and not isinstance(config, SagaConfig):
            raise TypeError(f"config must be a SagaConfig, got {type(config).__name__}")
        return config

    # ------------------------------------------------------------------ starting and waiting

    async def start(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        saga_id: str | None = None,
        *,
        correlation_id: str | None = None,
    ) -> str:
        """Durably store a new saga and run it in the background; return its id.

        Starting with the id of a saga that already exists starts nothing and returns the id
        (idempotent start).

        Raises:
            SagaNotFoundError: no saga is registered under ``name``.
            SagaDataError: ``data`` is not a JSON object, or ``saga_id`` is not a valid id.
            SagaError: the manager is closed (or closing).
        """
        self._check_open()
        flow, payload, saga_id = check_new(self._registry, name, data, saga_id, correlation_id)
        if saga_id in self._engine.runs or saga_id in self._starting:
            return saga_id  # already running (or being stored) here
        now = self._clock()
        engine = self._engine
        config = flow.config
        timeout = (
            self._timeout_delta
            if config is None
            else timedelta(seconds=config.default_timeout_seconds)
        )
        record = SagaRecord(
            saga_id=saga_id,
            saga_name=name,
            data=payload,
            created_at=now,
            updated_at=now,
            metadata={"correlation_id": correlation_id or saga_id},
            deadline_at=now + timeout,
            current_step=flow.entry,
            lease_owner=engine.worker_id,  # held by this worker from the first write
            lease_id=engine.lease_id,
            lease_expires_at=now + engine.lease.length,
        )
        if engine.hooks is not None:
            engine.hooks.stamp(record.metadata)  # e.g. the caller's trace context
        # close() waits for the starts in progress: a saga stored here is launched before
        # the shutdown stops it, so none is left behind under this worker's lease.
        self._starting.add(saga_id)
        self._launching += 1  # _begin_launch(), written out: this is the hot path
        try:
            try:
                await self._store.save(record)
            except ConcurrencyConflictError:
                await self._adopt(saga_id)
                return saga_id
            finally:
                self._starting.discard(saga_id)
            engine.launch(
                record,
                flow,
                deadline_in=(config or self._config).default_timeout_seconds,
            )
        finally:
            self._launching -= 1
            if self._idle is not None:  # close() is waiting
                self._wake_close()
        return saga_id

    async def _adopt(self, saga_id: str) -> None:
        """Run a saga an earlier ``start()`` of this worker stored but could not launch.

        That happens when the insert landed but its reply was lost: the caller saw an error
        and retried with the same id. The saga is held under this worker's own lease, so
        no other worker (nor ``recover()``) would run it before the lease expired.
        """
        existing = await self._store.load(saga_id)
        if (
            existing is None
            or existing.is_terminal
            or existing.lease_id != self._engine.lease_id
            or saga_id in self._engine.runs
        ):
            logger.debug(
                "saga %s already exists; start is a no-op",
                saga_id,
                extra=log_fields(saga_id=saga_id, worker_id=self._engine.worker_id),
            )
            return
        flow = self._registry.flows.get(existing.saga_name)
        if flow is not None:
            self._engine.launch(existing, flow)

    async def wait(self, saga_id: str, *, timeout: float | None = None) -> SagaRecord:
        """Return the saga's record once it is terminal.

        Works for sagas run by other workers too (the store is watched). Cancelling the
        caller stops the waiting, never the saga.

        Raises:
            SagaNotFoundError: no saga has this id.
            SagaTimeoutError: ``timeout`` seconds passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        poll = 0.01
        while True:
            run = self._engine.runs.get(saga_id)
            if run is not None:
                remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
                waiter = run.add_waiter()
                try:
                    if remaining is None:
                        final = await waiter
                    else:
                        async with asyncio.timeout(remaining):
                            final = await waiter
                except TimeoutError:
                    raise self._wait_timeout(saga_id, timeout) from None
                finally:
                    if waiter.cancelled() or not waiter.done():
                        run.discard_waiter(waiter)  # a waiter that gave up holds nothing
                if final is not None:
                    return final
            record = await self._store.load(saga_id)
            if record is None:
                raise SagaNotFoundError.for_id(saga_id)
            if record.is_terminal:
                return record
            if saga_id in self._engine.runs:
                continue
            if deadline is not None and loop.time() >= deadline:
                raise self._wait_timeout(saga_id, timeout)
            pause = poll if deadline is None else min(poll, max(deadline - loop.time(), 0.0))
            await asyncio.sleep(pause)
            poll = min(poll * 1.5, 0.5)

    @staticmethod
    def _wait_timeout(saga_id: str, timeout: float | None) -> SagaTimeoutError:
        return SagaTimeoutError(
            f"saga '{saga_id}' did not finish within {timeout:g}s",
            saga_id=saga_id,
            timeout=timeout,
        )

    async def execute(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        saga_id: str | None = None,
        *,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> SagaRecord:
        """Start a saga and wait for its terminal record (``start`` + ``wait``)."""
        started = await self.start(name, data, saga_id, correlation_id=correlation_id)
        return await self.wait(started, timeout=timeout)

    async def get(self, saga_id: str) -> SagaRecord | None:
        """Return the saga's current record, or ``None``."""
        return await self._store.load(saga_id)

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | None = None,
        limit: int = 100,
        waiting: bool | None = None,
        correlation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        offset: int = 0,
    ) -> builtins.list[SagaRecord]:
        """Return up to ``limit`` sagas, newest first, optionally filtered.

        ``waiting=True`` lists parked sagas only (``record.waiting`` says what each waits
        for and until when); ``waiting=False`` the others. ``correlation_id`` and
        ``created_after``/``created_before`` (inclusive, exclusive) filter; ``offset``
        skips that many matches (paging).

        Raises:
            TypeError: ``limit`` is not an int.
            ValueError: ``limit`` is negative, or ``status`` is not a saga status.
        """
        check_list_limit(limit)
        if status is not None:
            status = SagaStatus(status)
        if waiting is not None and not isinstance(waiting, bool):
            raise TypeError(f"waiting must be a bool or None, got {type(waiting).__name__}")
        extra: dict[str, Any] = {
            "waiting": waiting,
            "correlation_id": correlation_id,
            "created_after": created_after,
            "created_before": created_before,
            "offset": check_list_offset(offset) or None,
        }
        # Filters left at their defaults are not passed: a store written before them works.
        chosen = {key: value for key, value in extra.items() if value is not None}
        return await self._store.list(saga_name=saga_name, status=status, limit=limit, **chosen)

    async def counts(self, *, saga_name: str | None = None) -> dict[str, int]:
        """Count the sagas (of ``saga_name``, or all) by status, and the parked ones.

        Returns:
            ``{status value: count}`` for every status, and ``"waiting"``: the parked.
        """
        return await self._store.counts(saga_name=saga_name)

    # ------------------------------------------------------------------ choreography

    def start_on(
        self,
        event_type: type[DomainEvent],
        saga_name: str,
        *,
        data: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None = None,
        saga_id: Callable[[Any], str] | None = None,
    ) -> Callable[[], bool]:
        """Start ``saga_name`` whenever an ``event_type`` event is published on the bus.

        Args:
            event_type: The event class to react to (subclasses included).
            saga_name: A registered saga.
            data: The saga's data: a dict, a function of the event, or (by default) the
                event's own fields (times as ISO 8601 text).
            saga_id: A function of the event giving the saga id; by default
                ``"<saga_name>:<event_id>"``, so one event starts one saga however often
                it is delivered.

        Returns:
            A function that stops listening (returns whether it was listening).
        """
        subscriptions = self._subscriptions
        if subscriptions is None:
            raise SagaError("start_on() needs an event_bus on the manager")
        self.flow(saga_name)  # fail now on an unknown name

        return subscriptions.add(
            event_type, starter(self.start, saga_name, data=data, saga_id=saga_id)
        )

    # ------------------------------------------------------------------ shutdown

    def _begin_launch(self) -> None:
        self._launching += 1

    def _end_launch(self) -> None:
        self._launching -= 1
        self._wake_close()

    def _wake_close(self) -> None:
        """Let a waiting ``close()`` go on once no call is launching a saga."""
        if not self._launching and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _check_open(self) -> None:
        if self._closed:
            raise SagaError("this saga manager is closed")

    async def close(self) -> None:
        """Wait up to ``shutdown_timeout`` for running sagas, then stop the rest.

        Stopped sagas are not compensated: they stay ``RUNNING``/``COMPENSATING`` with their
        leases released, so any worker may resume them at once.
        """
        if self._closed:
            return
        self._closed = True
        if self._wake_server is not None:  # a serve() loop: stop claiming now
            self._wake_server()
        if self._launching:  # calls already storing or claiming a saga launch it first
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        if self._subscriptions is not None:
            self._subscriptions.clear()
        await self._drain()
        await self._engine.close()

    async def _drain(self, *, steps_only: bool = False) -> None:
        """Wait up to ``shutdown_timeout`` for the runs here; stop (and release) the rest.

        With ``steps_only`` (a worker leaving ``serve()``), each run stops after the step or
        compensation in flight and is released, instead of going on to its end.
        """
        engine = self._engine
        tasks = {run.task for run in engine.runs.values() if run.task is not None}
        if tasks:
            if steps_only:
                for run in builtins.list(engine.runs.values()):
                    run.stop(StopReason.DRAIN, "worker leaving serve()")
            _, pending = await asyncio.wait(tasks, timeout=self._config.shutdown_timeout)
            if pending:
                for run in builtins.list(engine.runs.values()):
                    run.stop(StopReason.SHUTDOWN, "worker shutting down")
                await asyncio.wait(pending)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
