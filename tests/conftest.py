"""Shared fixtures: strict asyncio, hypothesis profiles, and the PostgreSQL switch.

Strict asyncio (``tests/support/strict_asyncio.py``): every loop runs in debug mode, a
callback that holds the loop for 0.25 s or more fails its test (opt out with
``@pytest.mark.allow_blocking``), and pytest-timeout fails a test after 60 s.

PostgreSQL tests use ``LEXIGRAM_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When no server answers they are skipped
with the reason, unless ``LEXIGRAM_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which turns
the skip into a failure.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, settings

from tests.support.crash_support import Target, Workers, make_target

pytest_plugins = ["pytester", "tests.support.strict_asyncio"]

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_dsn() -> str:
    """The DSN PostgreSQL tests connect to."""
    return os.environ.get("LEXIGRAM_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)


def postgres_required() -> bool:
    """Whether a missing PostgreSQL server must fail the run instead of skipping."""
    return os.environ.get("LEXIGRAM_REQUIRE_POSTGRES", "") not in ("", "0", "false", "no")


def postgres_reachable(dsn: str) -> str | None:
    """Return why PostgreSQL at ``dsn`` cannot be used, or ``None`` if a socket connects."""
    try:
        import asyncpg  # noqa: F401 - optional dependency
    except ImportError:
        return "asyncpg is not installed (pip install 'lexigram-events[postgres]')"
    parsed = urlparse(dsn)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 5432
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as exc:
        return f"no PostgreSQL server at {host}:{port} ({exc})"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """A reachable PostgreSQL DSN, or skip (fail under LEXIGRAM_REQUIRE_POSTGRES=1)."""
    dsn = postgres_dsn()
    problem = postgres_reachable(dsn)
    if problem is not None:
        if postgres_required():
            pytest.fail(f"PostgreSQL is required (LEXIGRAM_REQUIRE_POSTGRES=1) but {problem}")
        pytest.skip(f"PostgreSQL tests skipped: {problem}; set LEXIGRAM_TEST_POSTGRES_DSN")
    return dsn


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests needing PostgreSQL (they use the ``pg_dsn`` fixture)."""
    for item in items:
        if "pg_dsn" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection imported out of the collector's way (shorter full collections)."""
    gc.collect()
    gc.freeze()


__all__ = ["postgres_dsn", "postgres_reachable", "postgres_required"]


# --------------------------------------------------------------------------- crash tests
# Shared by tests/test_crash_recovery.py and tests/test_worker_races.py.


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """A fresh SQLite file, or a fresh PostgreSQL table (dropped afterwards)."""
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    async with make_target(request.param, tmp_path, dsn) as made:
        yield made


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    """Worker processes sharing one side-effect log; none outlives the test."""
    started = Workers(tmp_path / "side-effects.log")
    try:
        yield started
    finally:
        await started.close()
