"""Where ``lexigram-sagas`` finds its store and the application's saga definitions.

- :func:`import_app` imports ``--app module:attribute`` (the current directory first on
  ``sys.path``); :func:`build_app` turns what it names into a manager: a
  ``SagaManager``/``SagaOrchestrator`` is used as it is, a callable is called (with
  ``store=`` the store of ``--store`` when it takes a ``store`` parameter, else with no
  argument) and must return one.
- :func:`open_url` opens ``--store``; a SQLite file must exist unless the command may
  create it (``worker``).
- :func:`runtime_on` gives ``worker`` and ``ui`` a manager on the chosen store with
  the application's definitions.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias, cast

from lexigram.events.sagas.base import SagaBase
from lexigram.events.sagas.manager import SagaManager
from lexigram.events.sagas.ops.cli_errors import (
    EXIT_ERROR,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
)
from lexigram.events.sagas.ops.urls import StoreURLError, describe_url, open_store
from lexigram.events.sagas.orchestrator import OrchestratedStep, SagaOrchestrator
from lexigram.events.sagas.store import InMemorySagaStore, SagaStore

__all__ = [
    "APP_ENV_VAR",
    "Runtime",
    "build_app",
    "check_exists",
    "import_app",
    "is_durable",
    "open_url",
    "runtime_on",
]

logger = logging.getLogger("lexigram.events.sagas.ops.cli")

APP_ENV_VAR = "LEXIGRAM_SAGAS_APP"
"""The environment variable ``--app`` is read from when not given."""

Runtime: TypeAlias = SagaManager | SagaOrchestrator
"""What ``--app`` names (or what the callable it names returns)."""


def import_app(spec: str) -> object:
    """Import the object ``spec`` (``module:attribute``) names.

    Raises:
        CommandError: a malformed spec, a missing module or attribute (usage errors), or
            an import that raised (``EXIT_ERROR``).
    """
    module_name, _, attribute = spec.partition(":")
    parts = attribute.split(".")
    if (
        not module_name
        or not all(part.isidentifier() for part in module_name.split("."))
        or not all(part.isidentifier() for part in parts)
    ):
        raise CommandError(
            f"--app {spec!r} must be module:attribute, e.g. orders.sagas:manager", EXIT_USAGE
        )
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CommandError(
                f"--app {spec!r}: no module named {missing!r} "
                "(looked in the current directory and on sys.path)",
                EXIT_USAGE,
            ) from exc
        raise CommandError(f"--app {spec!r}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:
        raise CommandError(
            f"--app {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for index, part in enumerate(parts):
        try:
            target = getattr(target, part)
        except AttributeError:
            owner = ".".join([module_name, *parts[:index]])
            raise CommandError(
                f"--app {spec!r}: {owner!r} has no attribute {part!r}", EXIT_USAGE
            ) from None
    return target


async def build_app(target: object, spec: str, store: SagaStore | None) -> Runtime:
    """The manager ``target`` is, or builds (given ``store`` when it takes one).

    Raises:
        CommandError: the callable raised (``EXIT_ERROR``), or what ``spec`` names is
            neither a manager nor a callable returning one (``EXIT_USAGE``).
    """
    if isinstance(target, SagaManager | SagaOrchestrator):
        return target
    if not callable(target):
        raise CommandError(_wrong_type(spec, target), EXIT_USAGE)
    try:
        wants = _store_parameter(target)
        if wants is not None and (store is not None or wants.default is wants.empty):
            built = target(store=store if store is not None else InMemorySagaStore())
        else:
            built = target()
        if inspect.isawaitable(built):
            built = await built
    except Exception as exc:
        raise CommandError(
            f"--app {spec!r}: calling it failed: {type(exc).__name__}: {exc}", EXIT_ERROR
        ) from exc
    if not isinstance(built, SagaManager | SagaOrchestrator):
        raise CommandError(_wrong_type(spec, built, returned=True), EXIT_USAGE)
    return built


def _store_parameter(function: object) -> inspect.Parameter | None:
    try:
        parameters = inspect.signature(function).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    found = parameters.get("store")
    if found is None or found.kind is inspect.Parameter.POSITIONAL_ONLY:
        return None
    return found


def _wrong_type(spec: str, value: object, *, returned: bool = False) -> str:
    what = "returned" if returned else "is"
    return (
        f"--app {spec!r} {what} a {type(value).__name__}, not a SagaManager or "
        "SagaOrchestrator (nor a function returning one)"
    )


def open_url(url: str, *, create: bool) -> SagaStore:
    """Open the store ``url`` names; unless ``create``, a SQLite file must exist.

    Raises:
        CommandError: a bad URL (``EXIT_USAGE``), a missing SQLite file
            (``EXIT_UNAVAILABLE``), a missing driver (``EXIT_ERROR``).
    """
    try:
        store = open_store(url)
    except StoreURLError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except ImportError as exc:
        raise CommandError(str(exc), EXIT_ERROR) from None
    if not create:
        check_exists(store, describe_url(url))
    return store


def check_exists(store: SagaStore, label: str) -> None:
    """Refuse a SQLite store whose file does not exist (reading must not create one).

    Raises:
        CommandError: with ``EXIT_UNAVAILABLE``.
    """
    path = _sqlite_path(store)
    if path is not None and not Path(path).is_file():
        raise CommandError(
            f"no SQLite database at {path} ({label}): check the path; only `worker` "
            "creates a new one",
            EXIT_UNAVAILABLE,
        )


def _sqlite_path(store: SagaStore) -> str | None:
    if "lexigram.events.sagas.sqlite" not in sys.modules:
        return None  # no SQLite store was ever built in this process
    from lexigram.events.sagas.sqlite import SQLiteSagaStore

    return store.path if isinstance(store, SQLiteSagaStore) else None


def is_durable(store: SagaStore) -> bool:
    """Whether ``store`` outlives this process (not an ``InMemorySagaStore``)."""
    return not isinstance(store, InMemorySagaStore)


def runtime_on(app: Runtime, store: SagaStore, spec: str, *, serving: bool) -> Runtime:
    """A manager with ``app``'s definitions that uses ``store``.

    ``app`` itself when it already uses ``store``. Otherwise a new manager of the same
    kind, with ``app``'s configuration, event bus and worker id, where every definition
    of ``app`` is registered again (``register``/``define`` with its own configuration).
    Per-type ``max_concurrency`` caps and the ``start_on``/``signal_on`` subscriptions of
    ``app`` cannot be carried over: when the copy is to run sagas (``serving``), a
    warning says so (name a function taking ``store`` as ``--app`` to keep them).
    """
    if app.store is store:
        return app
    if serving:
        logger.warning(
            "--app %s uses a store of its own: serving a copy of its definitions (%s) on "
            "the store given; its max_concurrency caps and start_on/signal_on "
            "subscriptions are not carried over (make --app a function taking store= to "
            "keep them)",
            spec,
            ", ".join(app.registered) or "none",
        )
    copy: Runtime
    if isinstance(app, SagaOrchestrator):
        copy = SagaOrchestrator(
            store, config=app.config, event_bus=app.event_bus, worker_id=app.worker_id
        )
        for name in app.registered:
            flow = app.flow(name)
            copy.define(name, _steps(flow.source, spec), config=flow.config)
    else:
        copy = SagaManager(
            store, config=app.config, event_bus=app.event_bus, worker_id=app.worker_id
        )
        for name in app.registered:
            flow = app.flow(name)
            copy.register(
                _saga_class(flow.source, spec),
                factory=cast("Callable[[], SagaBase]", flow.make_instance),
                config=flow.config,
            )
    return copy


def _steps(source: object, spec: str) -> list[OrchestratedStep]:
    """The steps an orchestrated flow was defined with (its ``source``)."""
    if isinstance(source, tuple | list) and all(
        isinstance(step, OrchestratedStep) for step in source
    ):
        return list(source)
    raise CommandError(f"--app {spec!r}: cannot copy a definition built from {source!r}")


def _saga_class(source: object, spec: str) -> type[SagaBase]:
    """The ``SagaBase`` subclass a manager's flow was compiled from (its ``source``)."""
    if isinstance(source, type) and issubclass(source, SagaBase):
        return source
    raise CommandError(f"--app {spec!r}: cannot copy a definition built from {source!r}")
