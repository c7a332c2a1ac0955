"""Sending signals to waiting sagas from any process: ``signal`` and ``signal_on``.

Mixed into :class:`~lexigram.events.sagas._runtime.SagaRuntime`, whose state it uses. A
signal is stored by the store (durable, deduplicated by ``signal_id``) and wakes the saga
if it is parked waiting for it; a serving worker then runs the waiting step with the
payload in ``ctx.signal``. A signal sent before the saga waits is kept until a step takes
it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from lexigram.events._domain import DomainEvent
from lexigram.events.sagas._engine.flow import MAX_SIGNAL_NAME, is_signal_name
from lexigram.events.sagas._subscriptions import Subscriptions, event_fields
from lexigram.events.sagas.codec import check_data, check_saga_id
from lexigram.events.sagas.errors import SagaError
from lexigram.events.sagas.store import SagaStore

__all__ = ["MAX_SIGNAL_ID_LENGTH", "SignalAPI"]

MAX_SIGNAL_ID_LENGTH = 200
"""The longest ``signal_id`` accepted (it is stored and indexed with the signal)."""


class SignalAPI:
    """``signal`` and ``signal_on`` of a saga runtime."""

    _store: SagaStore
    _subscriptions: Subscriptions | None

    async def signal(
        self,
        saga_id: str,
        name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        signal_id: str | None = None,
    ) -> bool:
        """Send the signal ``name`` to a saga, from any process; return whether it was new.

        The signal is stored durably before this returns. A step waiting for it
        (``wait_for=name``) takes it, with ``payload`` as ``ctx.signal``; if the saga is
        parked for it, a serving worker resumes it at once (within a poll interval on
        SQLite). A signal sent before the saga waits is kept until a step takes it.

        Args:
            saga_id: The saga to signal.
            name: The signal's name, as a step's ``wait_for`` names it.
            payload: A JSON object for the step (``{}`` when omitted).
            signal_id: Makes the send idempotent: a second signal with the same id to the
                same saga is dropped (``False`` is returned), even after the saga ended.
                A fresh id when omitted.

        Returns:
            ``True`` when the signal was stored, ``False`` for a duplicate ``signal_id``.

        Raises:
            SagaNotFoundError: no saga has this id.
            SagaFinishedError: the saga already ended (nothing was stored).
            SagaDataError: the payload is not a JSON object a store can hold.
            ValueError: ``name`` or ``signal_id`` is not printable text of 1 to 200
                characters.
        """
        check_saga_id(saga_id)
        if not is_signal_name(name):
            raise ValueError(
                f"signal name must be printable text of 1 to {MAX_SIGNAL_NAME} characters, "
                f"got {name!r}"
            )
        if signal_id is None:
            signal_id = uuid.uuid4().hex
        elif not (
            isinstance(signal_id, str)
            and 0 < len(signal_id) <= MAX_SIGNAL_ID_LENGTH
            and signal_id.isprintable()
        ):
            raise ValueError(
                "signal_id must be printable text of 1 to "
                f"{MAX_SIGNAL_ID_LENGTH} characters, got {signal_id!r}"
            )
        data = dict(payload) if isinstance(payload, Mapping) else payload
        checked = check_data(data, what="signal payload")
        return await self._store.send_signal(saga_id, name, checked, signal_id)

    def signal_on(
        self,
        event_type: type[DomainEvent],
        name: str,
        *,
        saga_id: Callable[[Any], str | None],
        payload: Callable[[Any], Mapping[str, Any]] | None = None,
        signal_id: Callable[[Any], str] | None = None,
    ) -> Callable[[], bool]:
        """Turn every ``event_type`` event on the bus into the signal ``name`` to a saga.

        The reply half of command/reply messaging: a step sends a command and waits for
        ``name``; the reply event, whichever process publishes it, becomes the signal.

        Args:
            event_type: The event class to react to (subclasses included).
            name: The signal to send.
            saga_id: A function of the event giving the saga to signal (``None``: the
                event is not for any saga, and is ignored).
            payload: A function of the event giving the payload; by default the event's
                own fields (``event.to_dict()``, times as ISO text).
            signal_id: A function of the event giving the signal id; by default the
                event's ``event_id``, so one event is one signal however often it is
                delivered.

        Returns:
            A function that stops listening (returns whether it was listening).

        Raises:
            SagaError: the manager has no event bus.
            ValueError: ``name`` is not a valid signal name.
        """
        subscriptions = self._subscriptions
        if subscriptions is None:
            raise SagaError("signal_on() needs an event_bus on the manager")
        if not is_signal_name(name):
            raise ValueError(f"signal name must be printable text, got {name!r}")
        return subscriptions.add(
            event_type,
            _signaller(self.signal, name, saga_id=saga_id, payload=payload, signal_id=signal_id),
        )


_Send = Callable[..., Awaitable[bool]]


def _signaller(
    send: _Send,
    name: str,
    *,
    saga_id: Callable[[Any], str | None],
    payload: Callable[[Any], Mapping[str, Any]] | None,
    signal_id: Callable[[Any], str] | None,
) -> Callable[[DomainEvent], Awaitable[None]]:
    """The handler ``signal_on`` subscribes: one signal per event id by default."""

    async def handler(event: DomainEvent) -> None:
        target = saga_id(event)
        if target is None:
            return
        body = payload(event) if payload is not None else event_fields(event)
        chosen = signal_id(event) if signal_id is not None else event.event_id
        await send(target, name, body, signal_id=chosen)

    return handler
