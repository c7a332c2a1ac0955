"""The store, the application and the managers one ``lexigram-sagas`` command uses.

:func:`open_session` resolves them from the options (``--store`` or
``LEXIGRAM_SAGAS_STORE``, ``--app`` or ``LEXIGRAM_SAGAS_APP``) and registers everything it
opens on an ``AsyncExitStack``, so that the command's end closes the managers, then the
stores, whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.ops.cli_apps import (
    Runtime,
    build_app,
    check_exists,
    import_app,
    is_durable,
    open_url,
)
from lexigram.events.sagas.ops.cli_errors import EXIT_USAGE, CommandError
from lexigram.events.sagas.ops.urls import ENV_VAR, describe_url
from lexigram.events.sagas.store import SagaStore

__all__ = ["Session", "open_session"]

logger = logging.getLogger("lexigram.events.sagas.ops.cli")

R = TypeVar("R", bound=Runtime)


class Session:
    """What a command works with; everything in it is closed when the command ends.

    Attributes:
        app: The application's manager (``--app``), if any.
        app_spec: The ``--app`` text.
        label: The store, for messages (its URL without a password).
    """

    def __init__(
        self,
        stack: contextlib.AsyncExitStack,
        store: SagaStore | None,
        label: str,
        app: Runtime | None,
        app_spec: str | None,
    ) -> None:
        self._stack = stack
        self._store = store
        self.label = label
        self.app = app
        self.app_spec = app_spec
        self._client: SagaManager | None = None

    @property
    def store(self) -> SagaStore:
        """The store the command reads and acts on."""
        if self._store is None:  # only commands declared storeless get here without one
            raise CommandError(_NO_STORE, EXIT_USAGE)
        return self._store

    def client(self, config: SagaConfig | None = None) -> SagaManager:
        """A manager on the store that runs nothing here (cancel, retry, signal, cleanup).

        Registrations are not needed by what it is used for: ``cancel`` of a saga it does
        not run stores a request, ``retry`` and ``signal`` write the store directly.
        """
        if self._client is None or config is not None:
            self._client = self.adopt(SagaManager(self.store, config=config))
        return self._client

    def adopt(self, runtime: R) -> R:
        """Close ``runtime`` when the command ends (before the stores)."""
        self._stack.push_async_callback(_quietly, runtime.close, "manager")
        return runtime


_NO_STORE = (
    f"no store given: pass --store URL or set {ENV_VAR} "
    "(sqlite:///path/to/sagas.db or postgresql://user@host/db)"
)


async def open_session(
    stack: contextlib.AsyncExitStack,
    *,
    url: str | None,
    app_spec: str | None,
    needs_store: bool,
    create: bool,
) -> Session:
    """Open the store and load the application a command needs.

    Args:
        stack: Closes what is opened here when the command ends.
        url: ``--store`` (or the environment's); ``None`` when neither is set.
        app_spec: ``--app`` (or the environment's).
        needs_store: Whether the command reads or writes sagas; without ``url`` it then
            uses the application's own store, if that one is durable.
        create: Whether the command may create a SQLite file that does not exist.

    Raises:
        CommandError: a bad URL or ``--app``, a missing SQLite file, no store at all.
    """
    store: SagaStore | None = None
    label = ""
    if url:
        store = open_url(url, create=create)
        stack.push_async_callback(_quietly, store.close, "store")
        label = describe_url(url)
    app: Runtime | None = None
    if app_spec:
        app = await build_app(import_app(app_spec), app_spec, store)
        if app.store is not store:  # the application's own store: ours to close as well
            stack.push_async_callback(_quietly, app.store.close, "store")
        stack.push_async_callback(_quietly, app.close, "manager")
    if store is None and needs_store:
        if app is None or not is_durable(app.store):
            raise CommandError(_NO_STORE, EXIT_USAGE)
        store = app.store
        label = f"the store of --app {app_spec} ({store!r})"
        if not create:
            check_exists(store, label)
    return Session(stack, store, label, app, app_spec)


async def _quietly(close: Callable[[], Awaitable[None]], what: str) -> None:
    """Close something at the end of a command; a failure there must not hide the result."""
    try:
        await close()
    except Exception:
        logger.debug("closing the %s failed", what, exc_info=True)
