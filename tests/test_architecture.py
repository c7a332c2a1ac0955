"""The import rules of ``docs/architecture.md``, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lexigram.events.sagas as sagas

ROOT = Path(sagas.__file__).parent
PACKAGE = "lexigram.events.sagas"
FRONT_ENDS = {
    "base",
    "manager",
    "orchestrator",
    "diagram",
    "_runtime",
    "_subscriptions",
    "_registry",
    "_orchestration",
}
STORES = {"_sqlite", "_postgres", "sqlite", "postgres", "_memory"}


def imports_of(path: Path) -> set[str]:
    """The ``lexigram.events.sagas`` modules ``path`` imports, as their first component."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            rest = node.module[len(PACKAGE) :].lstrip(".")
            if rest:
                found.add(rest.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", modules("_engine"), ids=lambda p: p.name)
def test_the_engine_imports_no_front_end_and_no_store_internals(path: Path) -> None:
    """``_engine`` sees the vocabulary and the store protocol only."""
    assert imports_of(path) & (FRONT_ENDS | STORES) == set()


@pytest.mark.parametrize(
    "path",
    [*modules("_sqlite"), *modules("_postgres"), ROOT / "_memory.py", ROOT / "store.py"],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_stores_know_nothing_of_the_engine(path: Path) -> None:
    """No store imports the engine or a front-end."""
    assert imports_of(path) & ({"_engine"} | FRONT_ENDS) == set()


@pytest.mark.parametrize(
    "name",
    ["types", "errors", "config", "context", "events", "codec", "_values", "_leases", "_logging"],
)
def test_the_vocabulary_imports_nothing_above_it(name: str) -> None:
    """Records, errors, settings and the codec import no engine, store or front-end."""
    assert imports_of(ROOT / f"{name}.py") & ({"_engine", "store"} | FRONT_ENDS | STORES) == set()


def test_no_source_module_is_over_500_lines() -> None:
    """Modules stay small (the house rule is about 500 lines)."""
    long = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if len(p.read_text().splitlines()) > 510
    ]
    assert long == []


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "ops").rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_tools_use_the_public_api(path: Path) -> None:
    """``ops`` (command, web admin) imports no engine internals and no store internals."""
    private = {name for name in imports_of(path) if name.startswith("_")}
    assert private <= {"_engine", "_runtime"}, private
    if "_engine" in imports_of(path):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "._engine." in node.module:
                assert node.module.endswith("._engine.flow"), node.module
