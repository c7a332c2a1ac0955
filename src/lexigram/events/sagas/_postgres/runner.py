"""How ``PostgresSagaStore`` reaches the server: its pool, the schema check, one statement.

Kept apart from the store because it changes for other reasons: the store is about what
each ``SagaStore`` method means in SQL; this module is about connections, outages and the
retry policy of a single statement (:meth:`StatementRunner.query`), or of a transaction of
a few (:meth:`StatementRunner.run`).

- The pool is created on first use when the store was given a DSN (and closed by it), or
  borrowed as given. Owned pools skip asyncpg's per-release reset query, so an operation
  is one round trip.
- The schema is created or checked once, before the first statement runs.
- Driver errors become the library's (``_postgres.errors.translate``): an outage is
  ``SagaStoreUnavailableError``, any other server error a ``SagaStoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

import asyncpg

from lexigram.events.sagas._logging import log_fields
from lexigram.events.sagas._postgres.errors import (
    RETRYABLE,
    connection_lost,
    describe,
    is_unavailable,
    translate,
)
from lexigram.events.sagas._postgres.schema import ensure_schema
from lexigram.events.sagas._postgres.sql import Statements
from lexigram.events.sagas.errors import SagaStoreError, SagaStoreUnavailableError

__all__ = ["Query", "StatementRunner", "Work", "pool_arguments"]

logger = logging.getLogger(__name__)

_CONFLICT_RETRIES = 5

Query = Literal["fetch", "fetchrow", "fetchval", "execute", "fetch_generic"]
"""The asyncpg connection method that runs a statement (what the caller wants back).

``fetch_generic`` is ``fetch`` under a generic plan (``SET LOCAL plan_cache_mode`` in a
transaction of its own): for a statement whose custom plans cost more to make than to run.
"""

_GENERIC_PLAN = "SET LOCAL plan_cache_mode = force_generic_plan"

T = TypeVar("T")

Work = Callable[[Any], Awaitable[T]]
"""What :meth:`StatementRunner.run` does with a pooled asyncpg connection."""


async def _keep_session(connection: Any) -> None:
    """Pool ``reset`` hook: the store leaves no session state behind, so nothing to reset.

    It never uses ``SET``, ``LISTEN``, cursors or session-level advisory locks, and its only
    transaction is managed; skipping asyncpg's default reset query saves a round trip on
    every operation.
    """


_POOL_HAS_RESET = "reset" in inspect.signature(asyncpg.create_pool).parameters
_CONNECT_PARAMETERS = frozenset(inspect.signature(asyncpg.connect).parameters) - {"dsn", "loop"}
"""The pool options a lone ``asyncpg.connect`` takes too (not sizes, ``init``, ``reset``)."""


def pool_arguments(
    *,
    min_size: int,
    max_size: int,
    command_timeout: float | None,
    connect_options: Mapping[str, Any],
    explicit: Mapping[str, Any],
) -> dict[str, Any]:
    """The keyword arguments of ``asyncpg.create_pool`` for an owned pool.

    Args:
        min_size: Connections the pool keeps open.
        max_size: Connections the pool may open.
        command_timeout: Seconds one statement may take (``None``: no limit).
        connect_options: What a ``key=value`` DSN was translated to.
        explicit: The store's ``pool_options``; as asyncpg does for a URL, options given
            explicitly win over the DSN's (``server_settings`` are merged key by key).
    """
    options: dict[str, Any] = {
        "min_size": min_size,
        "max_size": max_size,
        "command_timeout": command_timeout,
    }
    if _POOL_HAS_RESET:
        options["reset"] = _keep_session
    settings = {
        **connect_options.get("server_settings", {}),
        **(explicit.get("server_settings") or {}),
    }
    options.update(connect_options)
    options.update(explicit)
    if settings:
        options["server_settings"] = settings
    return options


class StatementRunner:
    """Runs one store's statements on its pool, creating the pool and schema on first use.

    Args:
        sql: The statements of the store's table.
        label: How errors name the store (its ``repr``, which never holds the DSN).
        dsn: Connect with this (the runner owns the pool), or ``None`` to borrow ``pool``.
        pool: The ``asyncpg.Pool`` to borrow when there is no DSN.
        options: ``asyncpg.create_pool`` arguments of an owned pool (:func:`pool_arguments`).
        timeout: Seconds one statement, or the wait for a free connection, may take.
    """

    def __init__(
        self,
        sql: Statements,
        *,
        label: str,
        dsn: str | None,
        pool: Any,
        options: Mapping[str, Any],
        timeout: float | None,
    ) -> None:
        self._sql = sql
        self._label = label
        self._dsn = dsn
        self._pool: Any = pool
        self._owns_pool = pool is None
        self._options = dict(options)
        self._timeout = timeout
        self._open_lock = asyncio.Lock()
        self._ready = False
        self.closed = False
        """Whether :meth:`close` was called (every later statement is refused)."""

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The pool in use (``None`` until an owned pool is created, and after closing)."""
        return self._pool

    async def close(self) -> None:
        """Close the pool if this runner created it; refuse every later statement."""
        self.closed = True
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            await pool.close()

    async def connection_pool(self) -> Any:
        """The pool, once connected and with the schema in place.

        Raises:
            SagaStoreUnavailableError: the store is closed or the server cannot be reached.
            SchemaVersionError: the table has a schema version this library does not use.
        """
        pool = self._pool
        if self._ready and pool is not None:
            return pool
        async with self._open_lock:
            if self.closed:
                raise SagaStoreUnavailableError(f"{self._label} is closed")
            if self._pool is None:
                self._pool = await self._create_pool()
            if not self._ready:
                try:
                    async with self._pool.acquire(timeout=self._timeout) as conn:
                        await ensure_schema(conn, self._sql)
                except SagaStoreError:
                    raise
                except Exception as exc:
                    error = self.translate(exc, "schema setup", None)
                    if error is exc:
                        raise
                    raise error from exc
                self._ready = True
            return self._pool

    async def _create_pool(self) -> Any:
        try:
            return await asyncpg.create_pool(self._dsn, **self._options)
        except Exception as exc:
            if not (is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError)):
                raise  # a bad DSN or pool option: a bug to fix, not an outage
            # No saga data is in play yet, so the server's own words may be quoted.
            raise SagaStoreUnavailableError(
                f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}"
            ) from exc

    @property
    def timeout(self) -> float | None:
        """Seconds one statement may take (pass it to each statement a :data:`Work` runs)."""
        return self._timeout

    async def query(
        self,
        kind: Query,
        sql: str,
        *args: Any,
        op: str,
        saga_id: str | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Run one statement on a pooled connection, translating driver errors.

        Retried as :meth:`run` says.
        """
        timeout = self._timeout

        async def statement(conn: Any) -> Any:
            if kind == "fetch_generic":
                async with conn.transaction():
                    await conn.execute(_GENERIC_PLAN, timeout=timeout)
                    return await conn.fetch(sql, *args, timeout=timeout)
            return await getattr(conn, kind)(sql, *args, timeout=timeout)

        return await self.run(statement, op=op, saga_id=saga_id, idempotent=idempotent)

    async def run(
        self,
        work: Work[T],
        *,
        op: str,
        saga_id: str | None = None,
        idempotent: bool = False,
    ) -> T:
        """Run ``work`` on a pooled connection, translating driver errors.

        ``work`` is one statement, or one transaction it opens itself (what it raises
        rolls the transaction back). Deadlocks and serialization failures (the server
        rolled it back) are retried a few times. A lost connection is retried once for
        ``idempotent`` work (the pool then opens a fresh one); otherwise it raises
        ``SagaStoreUnavailableError``, since a write may or may not have landed. What
        ``work`` raises that is not a driver error is raised as it is.
        """
        pool = await self.connection_pool()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._run(pool, work)
            except RETRYABLE as exc:
                if attempt >= _CONFLICT_RETRIES:
                    raise self.translate(exc, op, saga_id) from exc
                logger.info(
                    "%s of saga %s: %s; retrying",
                    op,
                    saga_id,
                    describe(exc),
                    extra=log_fields(saga_id=saga_id),
                )
                await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
            except Exception as exc:
                if connection_lost(exc) and not self.closed:
                    # A server restart kills every pooled connection: replace them all
                    # rather than meet the dead ones one failed operation at a time.
                    await pool.expire_connections()
                if idempotent and attempt == 1 and is_unavailable(exc) and not self.closed:
                    logger.info(
                        "%s: %s; retrying on a new connection",
                        op,
                        describe(exc),
                        extra=log_fields(saga_id=saga_id),
                    )
                    continue
                error = self.translate(exc, op, saga_id)
                if error is exc:
                    raise
                raise error from exc

    async def _run(self, pool: Any, work: Work[T]) -> T:
        async with pool.acquire(timeout=self._timeout) as conn:
            try:
                return await work(conn)
            except Exception as exc:
                if is_unavailable(exc):
                    # Never hand a suspect connection back (a lost one is already detached
                    # from its proxy, which then refuses the call).
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()
                raise

    async def connect_apart(self) -> Any:
        """Open a new connection like the pool's, outside it (``None``: not possible).

        With a DSN, the pool's connection arguments are used; with a borrowed pool, its own
        way of connecting (asyncpg's private ``_get_new_connection``, which also runs the
        pool's ``init``; a pool without it gives ``None``). The caller owns the connection.

        Raises:
            SagaStoreUnavailableError: the store is closed.
            Exception: whatever connecting raised (the caller decides).
        """
        if self.closed:
            raise SagaStoreUnavailableError(f"{self._label} is closed")
        if self._owns_pool:
            options = {k: v for k, v in self._options.items() if k in _CONNECT_PARAMETERS}
            return await asyncpg.connect(self._dsn, **options)
        connect = getattr(self._pool, "_get_new_connection", None)
        return None if connect is None else await connect()

    def translate(self, exc: Exception, op: str, saga_id: str | None) -> Exception:
        """The library's error for ``exc`` raised by ``op`` (the caller raises it ``from exc``)."""
        where = op if saga_id is None else f"{op} of saga '{saga_id}'"
        if self.closed:
            return SagaStoreUnavailableError(f"{where}: {self._label} is closed", saga_id=saga_id)
        return translate(exc, where, saga_id)
