"""The public namespace: ``__all__`` sorted and complete, documented import paths."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import lexigram.events
import lexigram.events.sagas as sagas

PUBLIC_MODULES = [
    "lexigram.events.sagas.base",
    "lexigram.events.sagas.context",
    "lexigram.events.sagas.config",
    "lexigram.events.sagas.errors",
    "lexigram.events.sagas.events",
    "lexigram.events.sagas.manager",
    "lexigram.events.sagas.store",
    "lexigram.events.sagas.types",
    "lexigram.events.sagas.testing",
    "lexigram.events.sagas.testing.contract",
    "lexigram.events.sagas.codec",
    "lexigram.events.sagas.orchestrator",
    "lexigram.events.sagas.diagram",
    "lexigram.events.sagas.ops.timeline",
    "lexigram.events.sagas.ops.urls",
]


def test_all_is_sorted() -> None:
    """``lexigram.events.sagas.__all__`` is sorted."""
    assert list(sagas.__all__) == sorted(sagas.__all__, key=lambda name: (not name.isupper(), name))
    assert list(lexigram.events.__all__) == sorted(lexigram.events.__all__)


def test_all_names_exist() -> None:
    """Every name in ``__all__`` is importable from the package."""
    for name in sagas.__all__:
        assert hasattr(sagas, name), name


def test_all_is_complete() -> None:
    """Every public class or function of the public submodules is exported."""
    exported = set(sagas.__all__)
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                defined_in = getattr(obj, "__module__", "")
                if defined_in.startswith("lexigram.events.sagas") and name not in exported:
                    if module_name.endswith((".testing", ".contract", ".codec")) or (
                        ".ops." in module_name
                    ):
                        continue  # testing helpers, the codec and the tools stay apart
                    missing.append(f"{module_name}.{name}")
    assert missing == []


def test_documented_import_paths() -> None:
    """The import paths of the seed documentation and SPEC section 1 work."""
    from lexigram.events import DomainEvent, EventBusProtocol, InMemoryEventBus
    from lexigram.events.config import SagaConfig as ReexportedConfig
    from lexigram.events.sagas.base import SagaBase, saga_step
    from lexigram.events.sagas.config import SagaConfig
    from lexigram.events.sagas.context import Err, Ok, Result, SagaContext, SagaStepResult
    from lexigram.events.sagas.manager import SagaManager, SagaManagerProtocol
    from lexigram.events.sagas.orchestrator import OrchestratedStep, SagaAction, SagaOrchestrator
    from lexigram.events.sagas.store import (
        InMemorySagaStore,
        SagaRecord,
        SagaStepRecord,
        SagaStore,
    )
    from lexigram.events.sagas.types import SagaStatus, SagaStepStatus

    assert ReexportedConfig is SagaConfig
    assert SagaManagerProtocol is SagaManager
    assert all(
        obj is not None
        for obj in (
            DomainEvent,
            EventBusProtocol,
            InMemoryEventBus,
            SagaBase,
            saga_step,
            Err,
            Ok,
            Result,
            SagaContext,
            SagaStepResult,
            InMemorySagaStore,
            SagaRecord,
            SagaStepRecord,
            SagaStore,
            SagaStatus,
            SagaStepStatus,
            OrchestratedStep,
            SagaAction,
            SagaOrchestrator,
        )
    )


def test_lexigram_is_a_namespace_package() -> None:
    """``lexigram`` has no ``__init__.py`` (PEP 420); ``py.typed`` ships."""
    package_dir = Path(lexigram.events.__file__).parent
    assert not (package_dir.parent / "__init__.py").exists()
    assert (package_dir / "py.typed").exists()


def test_every_public_object_has_a_docstring() -> None:
    """Every exported class and function is documented."""
    undocumented = [
        name
        for name in sagas.__all__
        if (inspect.isclass(getattr(sagas, name)) or inspect.isfunction(getattr(sagas, name)))
        and not inspect.getdoc(getattr(sagas, name))
    ]
    assert undocumented == []


def test_private_modules_are_underscored() -> None:
    """Every module not listed as public starts with an underscore."""
    public = {name.rsplit(".", 1)[1] for name in PUBLIC_MODULES}
    public |= {"sqlite", "postgres", "otel", "ops"}  # stores and tools with extras
    for info in pkgutil.iter_modules(sagas.__path__):
        assert info.name.startswith("_") or info.name in public, info.name
