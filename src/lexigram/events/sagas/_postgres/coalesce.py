"""Fewer ``NOTIFY``s under load: one signal covers the enqueues of a short window.

A transaction that sends ``NOTIFY`` takes a lock on the server's notification queue through
its commit, so every notifying commit of the whole server waits for the one before: with a
``pg_notify`` in every enqueue, enqueues run at a fraction of plain inserts. Workers need
one signal per burst, not one per saga (a woken worker claims everything its slots allow).

So a store's enqueues notify in their own statement only when no signal went out in the
last ``window`` seconds; the others insert quietly, and one trailing ``pg_notify`` follows
them within ``window``. It is sent after those inserts returned (they are committed), so no
enqueued saga is left without a signal after it; a worker polls anyway, should a signal be
lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from lexigram.events.sagas._logging import log_fields

__all__ = ["NOTIFY_WINDOW", "NotifyCoalescer"]

logger = logging.getLogger(__name__)

NOTIFY_WINDOW = 0.005
"""Seconds one signal covers: at most one trailing ``NOTIFY`` per window and store."""


class NotifyCoalescer:
    """Decides, per enqueue, whether its statement notifies or a trailing signal will.

    Args:
        send: Sends one ``pg_notify`` (its own statement) with the given payload.
        window: See :data:`NOTIFY_WINDOW`.
    """

    def __init__(
        self, send: Callable[[str], Awaitable[None]], *, window: float = NOTIFY_WINDOW
    ) -> None:
        self._send = send
        self._window = window
        self._last = float("-inf")  # monotonic time of the last signal sent or committed
        self._trailing: asyncio.Task[None] | None = None
        self._payload = ""

    def notify_inline(self) -> bool:
        """Whether the next enqueue's own statement should notify (none did just now)."""
        now = time.monotonic()
        if self._trailing is None and now - self._last >= self._window:
            self._last = now
            return True
        return False

    def follow(self, payload: str) -> None:
        """A quiet enqueue committed: make sure a signal follows it within the window."""
        self._payload = payload
        if self._trailing is None:
            self._trailing = asyncio.get_running_loop().create_task(
                self._send_later(), name="lexigram-notify"
            )

    async def _send_later(self) -> None:
        try:
            await asyncio.sleep(max(self._last + self._window - time.monotonic(), 0.0))
        finally:
            # Cleared before sending: an enqueue that commits from here on schedules the
            # next trailing signal, since this one may reach the workers before it commits.
            self._trailing = None
        self._last = time.monotonic()
        try:
            await self._send(self._payload)
        except Exception as exc:  # workers poll: a lost signal only delays a pickup
            logger.warning(
                "could not signal new work (%s); workers will find it when they poll",
                exc,
                extra=log_fields(),
            )

    async def close(self) -> None:
        """Send a pending trailing signal now (the store is closing)."""
        task = self._trailing
        if task is not None:
            task.cancel()
            self._trailing = None
            try:
                await self._send(self._payload)
            except Exception:  # closing: workers poll anyway
                logger.debug("no trailing signal at close", exc_info=True, extra=log_fields())
