"""``PostgresSagaStore.wait_for_work``: ``LISTEN`` on the table's channel, and its fallbacks.

A write that makes work (see ``sql``) notifies the table's channel when it commits; every
process waiting for work listens on it over one connection of its own:

- **Dedicated**: the connection is opened by the first ``wait_for_work`` (a process that
  only starts or enqueues sagas never holds one), outside the pool: a pooled connection
  must never stay ``LISTEN``ing, or whoever borrows it next would receive the signals.
- **Level-triggered**: a notification sets a flag that the next wait consumes, so a sign
  that arrives while the worker is busy claiming is not lost.
- **Local wake-ups**: until the connection listens (the first call is opening it, or it
  was lost), this store's own writes wake its waiters directly, so a worker is never slower
  to see its own process's work than another process's.
- **Never raises for a dead listener**: a connection that cannot be opened, or dies (server
  restart, ``pg_terminate_backend``, network), turns the wait into a plain sleep until its
  timeout; the next call opens a new one and, when it succeeds after such a loss, returns
  ``True`` at once (signs sent while nobody listened are lost, so the caller had better
  look). Opening runs in the background: a short timeout never cancels a slow connect.
- **Half-open connections**: a wait that times out checks a connection idle for a while
  with a ``SELECT 1`` (bounded), since a vanished server host sends no close.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.errors import describe

__all__ = ["WorkSignal", "check_timeout"]

logger = logging.getLogger(__name__)

_PING_AFTER: Final = 10.0
"""Seconds without any sign of life after which a timed-out wait checks the connection."""
_PING_TIMEOUT: Final = 5.0
"""Seconds the check may take before the connection is given up."""
_CLOSE_TIMEOUT: Final = 2.0


def check_timeout(timeout: object) -> float:
    """Return ``wait_for_work``'s ``timeout`` as a float.

    Raises:
        TypeError: ``timeout`` is not a number.
        ValueError: ``timeout`` is negative, infinite or NaN.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not 0 <= timeout < math.inf:
        raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout}")
    return float(timeout)


Connect = Callable[[], Awaitable[Any]]
"""Opens a new asyncpg connection outside the pool (``None``: this store cannot)."""


class WorkSignal:
    """Tells ``wait_for_work`` when work may have appeared, from any process.

    Args:
        channel: The channel to ``LISTEN`` on (a validated identifier).
        connect: Opens the dedicated connection.
        label: How log messages name the store (never the DSN).
    """

    def __init__(self, channel: str, connect: Connect, *, label: str) -> None:
        self._channel = channel
        self._connect = connect
        self._label = label
        self._conn: Any = None
        self._opening: asyncio.Task[Any] | None = None
        self._signal = asyncio.Event()
        self._missed = False  # a connection was lost, or failed to open: signs may be lost
        self._failing = False  # the last attempt to listen failed (log the next failure quietly)
        self._last_sign = 0.0  # monotonic time of the last sign of life of the connection
        self._pinging = False
        self._unable = False  # ``connect`` cannot open a connection: never try again
        self._closed = False

    @property
    def listening(self) -> bool:
        """Whether a connection is listening (so this process receives every signal)."""
        conn = self._conn
        return conn is not None and not conn.is_closed()

    def wake(self) -> None:
        """Signal work found here: wakes the current waiters, and the next one."""
        self._signal.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a signal; return whether one came.

        Never raises because of the connection (see the module docstring). Returns
        ``False`` once :meth:`close` was called.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        if not (self.listening or self._closed or self._unable) and await self._listen(timeout):
            missed, self._missed = self._missed, False
            if missed:
                return True  # listening again: signs sent meanwhile reached nobody
        if not self._signal.is_set():
            try:
                async with asyncio.timeout_at(deadline):
                    await self._signal.wait()
            except TimeoutError:
                await self._check()
                return False
        if self._closed:
            return False
        self._signal.clear()
        return True

    async def _listen(self, timeout: float) -> bool:
        """Open the connection and ``LISTEN``, waiting at most ``timeout``; return whether done.

        The attempt goes on in the background past ``timeout``; the next call takes it up.
        """
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        done, _ = await asyncio.wait({opening}, timeout=timeout)
        if not done or opening.cancelled():  # still connecting, or close() stopped it
            return False
        if self._opening is opening:
            self._opening = None
        try:
            conn = opening.result()
        except Exception as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = self._missed = True
            logger.log(
                level,
                "%s: cannot listen for work (%s); waiting without signals from other "
                "processes, and trying again on the next wait",
                self._label,
                describe(exc),
                extra=log_fields(),
            )
            return False
        if conn is None:
            if not self._unable:
                self._unable = True
                logger.info(
                    "%s: cannot open a connection outside its pool; waiting for work without "
                    "signals from other processes",
                    self._label,
                    extra=log_fields(),
                )
            return False
        if self._closed:
            await _close(conn)
            return False
        if self._failing:
            logger.info("%s: listening for work again", self._label, extra=log_fields())
        self._failing = False
        self._conn = conn
        self._last_sign = time.monotonic()
        return True

    async def _open(self) -> Any:
        conn = await self._connect()
        if conn is None:
            return None
        try:
            conn.add_termination_listener(self._on_lost)
            await conn.add_listener(self._channel, self._on_notification)
        except (Exception, asyncio.CancelledError):
            conn.terminate()
            raise
        return conn

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._last_sign = time.monotonic()
        self._signal.set()

    def _on_lost(self, conn: Any) -> None:
        if conn is self._conn:
            self._conn = None
            self._missed = True
            if not self._closed:
                logger.info(
                    "%s: the connection listening for work was lost; reconnecting on the next wait",
                    self._label,
                    extra=log_fields(),
                )

    async def _check(self) -> None:
        """Give up a connection that stayed silent and does not answer a ``SELECT 1``."""
        conn = self._conn
        if (
            conn is None
            or self._pinging
            or time.monotonic() - self._last_sign < _PING_AFTER
            or conn.is_closed()
        ):
            return
        self._pinging = True
        try:
            await conn.execute("SELECT 1", timeout=_PING_TIMEOUT)
            self._last_sign = time.monotonic()
        except Exception as exc:
            logger.info(
                "%s: the connection listening for work does not answer (%s); reconnecting",
                self._label,
                describe(exc),
                extra=log_fields(),
            )
            if self._conn is conn:
                self._conn = None
                self._missed = True
            conn.terminate()
        finally:
            self._pinging = False

    async def close(self) -> None:
        """Stop listening and close the connection; current waiters return ``False``."""
        self._closed = True
        self._signal.set()
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
            await asyncio.wait({opening})
            if not opening.cancelled() and opening.exception() is None:
                conn = opening.result()
                if conn is not None:
                    await _close(conn)
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)


async def _close(conn: Any) -> None:
    """Close a connection politely, or cut it if that does not work at once."""
    try:
        await conn.close(timeout=_CLOSE_TIMEOUT)
    except Exception:
        conn.terminate()
