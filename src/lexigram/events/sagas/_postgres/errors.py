"""How ``PostgresSagaStore`` classifies asyncpg's errors.

Three kinds matter to the engine:

- **retryable**: the server rolled the statement back as a whole (serialization failure,
  deadlock), so running it again is safe whatever it was;
- **unavailable**: the server, or the way to it, is gone or refusing work for now
  (connection lost, shutdown, too many connections, a standby mid-failover, timeouts).
  A write that fails this way may or may not have landed; it becomes
  ``SagaStoreUnavailableError``, which the engine retries and disambiguates;
- anything else from the server is a ``SagaStoreError`` naming the SQLSTATE.

Messages never quote the driver's text for server errors: PostgreSQL echoes offending
values in some of them, and context payloads must not reach logs or error messages. The
driver's exception stays chained as ``__cause__``.
"""

from __future__ import annotations

import asyncpg

from lexigram.events.sagas.errors import SagaStoreError, SagaStoreUnavailableError

__all__ = ["RETRYABLE", "connection_lost", "describe", "is_unavailable", "translate"]

RETRYABLE: tuple[type[Exception], ...] = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)
"""Errors after which the statement was rolled back, so repeating it is safe."""

_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08, and "closed mid-operation"
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, e.g. mid-failover
    asyncpg.exceptions.InterfaceError,  # connection or pool closed
    asyncpg.exceptions.InternalClientError,  # protocol out of step after a lost connection
    OSError,  # refused, reset, unreachable; TimeoutError (statement or pool wait) too
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server cannot be used right now (a transient outage).

    Argument errors (``asyncpg``'s ``DataError`` is an ``InterfaceError`` and a
    ``ValueError``) are bugs or bad data, not outages.
    """
    return isinstance(exc, _UNAVAILABLE) and not isinstance(exc, ValueError | TypeError)


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says a connection (and likely its pool-mates) is dead.

    A timeout or a full server is not: the connections may be fine, and reconnecting
    every one of them would only add load.
    """
    return (
        is_unavailable(exc)
        and not isinstance(exc, TimeoutError | asyncpg.exceptions.InsufficientResourcesError)
        and not isinstance(exc, asyncpg.exceptions.QueryCanceledError)
    )


def describe(exc: BaseException) -> str:
    """Name an error; quote its message only where it cannot echo stored values."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"
    if is_unavailable(exc):  # socket and client errors: no stored values in them
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def translate(exc: Exception, where: str, saga_id: str | None) -> Exception:
    """Return the library's error for a driver error (the caller raises it ``from exc``).

    Args:
        exc: What asyncpg (or the socket) raised.
        where: The operation, e.g. ``"save of saga 's-1'"``.
        saga_id: The saga concerned, if one.
    """
    if isinstance(exc, RETRYABLE) or is_unavailable(exc):
        return SagaStoreUnavailableError(
            f"{where}: PostgreSQL unavailable ({describe(exc)})", saga_id=saga_id
        )
    if isinstance(exc, asyncpg.PostgresError):
        return SagaStoreError(f"{where} failed: {describe(exc)}", saga_id=saga_id)
    return exc
