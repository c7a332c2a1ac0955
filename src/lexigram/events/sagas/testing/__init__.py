"""Helpers for testing your sagas: store wrappers, a manual clock and a sleep that never waits.

Example — crash a worker right after its second write, then recover in a "new process"::

    store = InMemorySagaStore()
    faulty = FaultyStore(store, crash_after_write=2)
    first = SagaManager(faulty, worker_id="worker-1")
    first.register(OrderSaga)
    saga_id = await first.start("orders", {...})
    ...  # the run dies with SimulatedCrash; nothing is released, as in a real crash
    second = SagaManager(store, worker_id="worker-1")  # same name: takes over at once
    second.register(OrderSaga)
    await second.recover()
    record = await second.wait(saga_id)
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar, get_args

from lexigram.events.sagas.errors import SagaStoreUnavailableError
from lexigram.events.sagas.store import SagaStore
from lexigram.events.sagas.types import SagaRecord, SagaSignal, SagaStatus

__all__ = [
    "FaultyStore",
    "ManualClock",
    "NoWaits",
    "SimulatedCrash",
    "StoreCall",
    "StoreMethod",
    "StoreWrapper",
]

T = TypeVar("T")
_Result_co = TypeVar("_Result_co", covariant=True)

StoreMethod = Literal[
    "save",
    "load",
    "list_by_name",
    "list",
    "delete",
    "claim",
    "renew",
    "release",
    "request_cancel",
    "cancel_requests",
    "wait_for_work",
    "counts",
    "send_signal",
    "next_signal",
    "wake",
    "delete_terminal",
    "close",
]
"""The name of a :class:`SagaStore` method."""

_VERSIONED_WRITES: frozenset[StoreMethod] = frozenset({"save", "claim", "release"})


class SimulatedCrash(BaseException):
    """Raised by :class:`FaultyStore` to stand for the process dying at that instant.

    It derives from ``BaseException`` so that, like a real crash, no ``except Exception``
    in the engine or in your code handles it.
    """


class ManualClock:
    """A clock for ``SagaManager(clock=...)`` and ``InMemorySagaStore(clock=...)``.

    Calling it returns the current (fake) UTC time; ``advance`` moves it forward.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        """Return the current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)  # no slots: with them, StoreCall[int](...) fails on Python 3.11
class StoreCall(Generic[_Result_co]):
    """One call of a :class:`SagaStore` method, as :meth:`StoreWrapper.forward` receives it.

    Its type parameter is what the method returns.

    Attributes:
        method: The method's name, e.g. ``"save"``.
        arguments: Every argument by its parameter name in :class:`SagaStore`, e.g.
            ``{"record": record}`` for ``save`` or ``{"saga_id": ..., "owner": ...,
            "lease_id": ...}`` for ``release``.
    """

    method: StoreMethod
    arguments: Mapping[str, Any]

    @property
    def is_write(self) -> bool:
        """Whether this is ``save``, ``claim`` or ``release``: a write that raises a version.

        ``renew`` and the deletes are not counted (``renew`` leaves the version alone).
        """
        return self.method in _VERSIONED_WRITES

    async def send(self, store: SagaStore) -> _Result_co:
        """Make this call on ``store``, positional and keyword arguments as the port has them."""
        args: builtins.list[Any] = []
        kwargs: dict[str, Any] = {}
        for parameter in _PARAMETERS[self.method]:
            if parameter.name not in self.arguments:  # an optional one left out
                continue
            value = self.arguments[parameter.name]
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[parameter.name] = value
            else:
                args.append(value)
        result: _Result_co = await getattr(store, self.method)(*args, **kwargs)
        return result


class StoreWrapper:
    """A store that passes every call through to ``inner``, all through :meth:`forward`.

    Subclass it and override :meth:`forward` alone to observe or disturb calls: it sees each
    call as a :class:`StoreCall` and performs it with ``call.send(self.inner)``::

        T = TypeVar("T")

        class CountingStore(StoreWrapper):
            def __init__(self, inner: SagaStore) -> None:
                super().__init__(inner)
                self.calls: list[str] = []

            async def forward(self, call: StoreCall[T]) -> T:
                self.calls.append(call.method)
                return await call.send(self.inner)
    """

    def __init__(self, inner: SagaStore) -> None:
        self.inner = inner

    async def forward(self, call: StoreCall[T]) -> T:
        """Perform ``call`` on the inner store; every method of the wrapper comes here."""
        return await call.send(self.inner)

    # The SagaStore methods, typed as the port declares them; each only describes its call.

    async def save(self, record: SagaRecord) -> None:
        """Forward ``save``."""
        call: StoreCall[None] = StoreCall("save", {"record": record})
        await self.forward(call)

    async def load(self, saga_id: str) -> SagaRecord | None:
        """Forward ``load``."""
        call: StoreCall[SagaRecord | None] = StoreCall("load", {"saga_id": saga_id})
        return await self.forward(call)

    async def list_by_name(self, saga_name: str) -> builtins.list[SagaRecord]:
        """Forward ``list_by_name``."""
        call: StoreCall[builtins.list[SagaRecord]] = StoreCall(
            "list_by_name", {"saga_name": saga_name}
        )
        return await self.forward(call)

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
        """Forward ``list`` (the filters left at their defaults are not passed on)."""
        args: dict[str, Any] = {"saga_name": saga_name, "status": status, "limit": limit}
        extra = {
            "waiting": waiting,
            "correlation_id": correlation_id,
            "created_after": created_after,
            "created_before": created_before,
            "offset": offset or None,
        }
        args.update({key: value for key, value in extra.items() if value is not None})
        call: StoreCall[builtins.list[SagaRecord]] = StoreCall("list", args)
        return await self.forward(call)

    async def delete(self, saga_id: str) -> bool:
        """Forward ``delete``."""
        call: StoreCall[bool] = StoreCall("delete", {"saga_id": saga_id})
        return await self.forward(call)

    async def claim(
        self,
        owner: str,
        lease_id: str,
        *,
        lease_seconds: float,
        saga_names: Collection[str],
        limit: int = 100,
        saga_id: str | None = None,
        exclude: Collection[str] = (),
    ) -> builtins.list[SagaRecord]:
        """Forward ``claim``."""
        call: StoreCall[builtins.list[SagaRecord]] = StoreCall(
            "claim",
            {
                "owner": owner,
                "lease_id": lease_id,
                "lease_seconds": lease_seconds,
                "saga_names": saga_names,
                "limit": limit,
                "saga_id": saga_id,
                "exclude": exclude,
            },
        )
        return await self.forward(call)

    async def renew(
        self, owner: str, lease_id: str, saga_ids: Sequence[str], *, lease_seconds: float
    ) -> builtins.list[str]:
        """Forward ``renew``."""
        call: StoreCall[builtins.list[str]] = StoreCall(
            "renew",
            {
                "owner": owner,
                "lease_id": lease_id,
                "saga_ids": saga_ids,
                "lease_seconds": lease_seconds,
            },
        )
        return await self.forward(call)

    async def release(self, saga_id: str, owner: str, lease_id: str) -> bool:
        """Forward ``release``."""
        call: StoreCall[bool] = StoreCall(
            "release", {"saga_id": saga_id, "owner": owner, "lease_id": lease_id}
        )
        return await self.forward(call)

    async def request_cancel(self, saga_id: str, reason: str) -> SagaRecord | None:
        """Forward ``request_cancel``."""
        call: StoreCall[SagaRecord | None] = StoreCall(
            "request_cancel", {"saga_id": saga_id, "reason": reason}
        )
        return await self.forward(call)

    async def cancel_requests(self, owner: str, lease_id: str) -> dict[str, str]:
        """Forward ``cancel_requests``."""
        call: StoreCall[dict[str, str]] = StoreCall(
            "cancel_requests", {"owner": owner, "lease_id": lease_id}
        )
        return await self.forward(call)

    async def wait_for_work(self, timeout: float) -> bool:
        """Forward ``wait_for_work``."""
        call: StoreCall[bool] = StoreCall("wait_for_work", {"timeout": timeout})
        return await self.forward(call)

    async def counts(self, *, saga_name: str | None = None) -> dict[str, int]:
        """Forward ``counts``."""
        call: StoreCall[dict[str, int]] = StoreCall("counts", {"saga_name": saga_name})
        return await self.forward(call)

    async def send_signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        """Forward ``send_signal``."""
        call: StoreCall[bool] = StoreCall(
            "send_signal",
            {"saga_id": saga_id, "name": name, "payload": payload, "signal_id": signal_id},
        )
        return await self.forward(call)

    async def next_signal(self, saga_id: str, name: str, after: int) -> SagaSignal | None:
        """Forward ``next_signal``."""
        call: StoreCall[SagaSignal | None] = StoreCall(
            "next_signal", {"saga_id": saga_id, "name": name, "after": after}
        )
        return await self.forward(call)

    async def wake(self, saga_id: str) -> bool:
        """Forward ``wake``."""
        call: StoreCall[bool] = StoreCall("wake", {"saga_id": saga_id})
        return await self.forward(call)

    async def delete_terminal(self, *, before: datetime, limit: int = 1000) -> int:
        """Forward ``delete_terminal``."""
        call: StoreCall[int] = StoreCall("delete_terminal", {"before": before, "limit": limit})
        return await self.forward(call)

    async def close(self) -> None:
        """Forward ``close`` (closing the inner store)."""
        call: StoreCall[None] = StoreCall("close", {})
        await self.forward(call)


class FaultyStore(StoreWrapper):
    """Wraps a store and fails chosen writes, to test crashes and outages.

    Writes (``save``, ``claim``, ``release``) are numbered from 1 in the order they are
    attempted. Reads, ``renew`` and the deletes pass through.

    Args:
        inner: The store that really keeps the data.
        crash_before_write: Raise :class:`SimulatedCrash` instead of performing this write.
        crash_after_write: Perform this write, then raise :class:`SimulatedCrash`.
        unavailable_writes: Raise ``SagaStoreUnavailableError`` instead of these writes.
        ambiguous_writes: Perform these writes, then raise ``SagaStoreUnavailableError``
            (the commit landed but the caller cannot know).
    """

    def __init__(
        self,
        inner: SagaStore,
        *,
        crash_before_write: int | None = None,
        crash_after_write: int | None = None,
        unavailable_writes: Iterable[int] = (),
        ambiguous_writes: Iterable[int] = (),
    ) -> None:
        super().__init__(inner)
        self.crash_before_write = crash_before_write
        self.crash_after_write = crash_after_write
        self.unavailable_writes = set(unavailable_writes)
        self.ambiguous_writes = set(ambiguous_writes)
        self.writes = 0
        """How many writes were attempted so far."""
        self.saved: builtins.list[tuple[str, int, SagaStatus]] = []
        """``(saga_id, version, status)`` of every save that reached the inner store."""

    async def forward(self, call: StoreCall[T]) -> T:
        """Perform ``call`` on the inner store, failing the configured writes."""
        if not call.is_write:
            return await call.send(self.inner)
        self.writes += 1
        number = self.writes
        if number == self.crash_before_write:
            raise SimulatedCrash(f"simulated crash before write {number}")
        if number in self.unavailable_writes:
            raise SagaStoreUnavailableError(f"simulated outage at write {number}")
        result = await call.send(self.inner)
        if call.method == "save":
            record: SagaRecord = call.arguments["record"]
            self.saved.append((record.saga_id, record.version, record.status))
        if number in self.ambiguous_writes:
            raise SagaStoreUnavailableError(f"simulated lost reply after write {number}")
        if number == self.crash_after_write:
            raise SimulatedCrash(f"simulated crash after write {number}")
        return result


class NoWaits:
    """A stand-in for ``asyncio.sleep`` that notes each delay and does not wait.

    Give it to the manager to remove every retry delay, a step's own ``retry_delay``
    included, and check the delays the engine asked for::

        no_waits = NoWaits()
        manager = SagaManager(store, sleep=no_waits)
        manager.register(OrderSaga)
        await manager.execute("orders", {...})
        assert no_waits.delays == [1.0, 2.0]  # two retries with doubling backoff
        assert no_waits.total == 3.0

    Each call still yields to the event loop once (``await asyncio.sleep(0)``), so other
    tasks interleave with the sleeper as they would around a real wait.
    """

    def __init__(self) -> None:
        self.delays: builtins.list[float] = []
        """Every delay requested, in seconds, oldest first."""

    async def __call__(self, seconds: float) -> None:
        """Note ``seconds`` and yield to the event loop once instead of waiting."""
        self.delays.append(float(seconds))
        await asyncio.sleep(0)

    @property
    def total(self) -> float:
        """The sum of the delays requested: the time a real ``asyncio.sleep`` would take."""
        return sum(self.delays)


_PARAMETERS: dict[str, tuple[inspect.Parameter, ...]] = {
    name: tuple(inspect.signature(getattr(SagaStore, name)).parameters.values())[1:]
    for name in get_args(StoreMethod)
}
"""The parameters of each ``SagaStore`` method (``self`` dropped), to call it in its shape."""
