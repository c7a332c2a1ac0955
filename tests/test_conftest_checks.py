"""The strict asyncio setup works: debug mode is on and blocking the loop fails a test."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from tests.support.strict_asyncio import BLOCKING_THRESHOLD, BlockingReports, blocked_seconds

ROOT = Path(__file__).resolve().parent.parent

GENERATED_TESTS = """
import asyncio
import time

import pytest


async def test_blocks() -> None:
    time.sleep(0.5)


@pytest.mark.allow_blocking
async def test_blocks_on_purpose() -> None:
    time.sleep(0.5)


async def test_yields() -> None:
    await asyncio.sleep(0.01)
"""

GENERATED_CONFIG = """
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_debug = true
asyncio_default_fixture_loop_scope = "function"
addopts = ["--strict-markers", "-p", "tests.support.strict_asyncio"]
filterwarnings = ["error"]
markers = ["allow_blocking: blocks on purpose"]
"""


async def test_async_tests_run_in_debug_mode() -> None:
    """The loop of an async test has asyncio debug mode on."""
    assert asyncio.get_running_loop().get_debug()


def test_loops_of_sync_tests_run_in_debug_mode() -> None:
    """A loop a sync test makes with ``asyncio.run`` has debug mode on too."""

    async def debug() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert asyncio.run(debug())


def test_the_threshold_catches_a_half_second_block() -> None:
    """The threshold is above asyncio's 0.1 s report and below a 0.5 s ``time.sleep``."""
    assert 0.1 < BLOCKING_THRESHOLD < 0.5


def test_only_slow_callback_reports_over_the_threshold_are_kept() -> None:
    """The handler keeps reports of long callbacks and ignores short ones and other logs."""

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.WARNING, __file__, 1, msg, args, None)

    reports = BlockingReports(threshold=0.25)
    for kept in (record("Executing %s took %.3f seconds", "<Handle a>", 0.5),):
        reports.handle(kept)
    for ignored in (
        record("Executing %s took %.3f seconds", "<Handle b>", 0.12),
        record("Task was destroyed but it is pending!"),
    ):
        reports.handle(ignored)
    assert reports.reports == ["Executing <Handle a> took 0.500 seconds"]
    assert blocked_seconds(record("poll took %.3f ms", 2.0)) is None


@pytest.mark.slow
def test_a_test_that_blocks_the_loop_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``time.sleep(0.5)`` in a test coroutine fails it, unless marked ``allow_blocking``."""
    # The generated run loads the plugin as ``tests.support.strict_asyncio``.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyprojecttoml(GENERATED_CONFIG)
    pytester.makepyfile(test_generated=GENERATED_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "the event loop was blocked for 0.25 s or more during call:",
            "  Executing <Task*coro=<test_blocks()*took 0.5* seconds",
            "*FAILED test_generated.py::test_blocks - *",
        ]
    )
