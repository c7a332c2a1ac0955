"""Strict asyncio for the test suite: debug mode everywhere, and blocking fails the test.

pytest-asyncio runs every async test on a loop in debug mode (``asyncio_debug = true`` in
``pyproject.toml``). This plugin, loaded by ``tests/conftest.py``, adds two things:

- **Debug mode for the loops sync tests make themselves** (the property tests call
  ``asyncio.run``): ``PYTHONASYNCIODEBUG=1`` is set while a sync test runs. It is not set
  for async tests, so the worker processes they spawn run at normal speed.
- **The blocking check.** In debug mode, after a callback held the loop for longer than
  ``loop.slow_callback_duration`` (asyncio's default, 0.1 s), the loop logs
  ``Executing <Handle ...> took X seconds`` on the ``asyncio`` logger. A report of at
  least :data:`BLOCKING_THRESHOLD` seconds during a test's setup, call or teardown fails
  that test, unless it is marked ``@pytest.mark.allow_blocking``.

The check reads the duration from the log record instead of setting each loop's
``slow_callback_duration``: the loops are made by pytest-asyncio and ``asyncio.run``, not
by us, and the record carries the duration anyway. Time the garbage collector spent during
the phase is taken off a report: a full collection of the test process's heap (grown over
more than a thousand tests) is not blocking code under test.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager

import pytest
from pytest_asyncio import is_async_test

__all__ = ["BLOCKING_THRESHOLD", "BlockingReports", "blocked_seconds"]

BLOCKING_THRESHOLD = 0.25
"""Seconds one callback may hold the event loop before the test fails.

Above asyncio's own 0.1 s report threshold, so that a loaded two-core machine running a
debug-mode loop does not fail a test that was merely slow; well below the 0.5 s of a
``time.sleep(0.5)`` left in a step.
"""

_SLOW_CALLBACK_MESSAGE = "Executing %s took %.3f seconds"
"""The format string ``asyncio.base_events`` logs a slow callback with (3.11 to 3.13)."""


class _GcClock:
    """Seconds the garbage collector has run in this process (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


_GC = _GcClock()


def blocked_seconds(record: logging.LogRecord) -> float | None:
    """How long the callback reported by ``record`` held the loop, or ``None`` if no report."""
    args = record.args
    if record.msg != _SLOW_CALLBACK_MESSAGE or not isinstance(args, tuple) or len(args) != 2:
        return None
    seconds = args[1]
    return float(seconds) if isinstance(seconds, int | float) else None


class BlockingReports(logging.Handler):
    """Collects the asyncio slow-callback reports of at least ``threshold`` seconds."""

    def __init__(self, threshold: float = BLOCKING_THRESHOLD) -> None:
        super().__init__(logging.WARNING)
        self.threshold = threshold
        self.reports: list[str] = []
        self._gc_at_start = _GC.total

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the report if the callback blocked for ``threshold`` seconds or more.

        The collector's time since the phase began is not counted as blocking.
        """
        seconds = blocked_seconds(record)
        if seconds is None:
            return
        if seconds - (_GC.total - self._gc_at_start) >= self.threshold:
            self.reports.append(record.getMessage())


@contextmanager
def _debug_env_for_sync_test(item: pytest.Item) -> Iterator[None]:
    """Turn on debug mode for loops a sync test creates (``asyncio.run``)."""
    if is_async_test(item) or "PYTHONASYNCIODEBUG" in os.environ:
        yield
        return
    os.environ["PYTHONASYNCIODEBUG"] = "1"
    try:
        yield
    finally:
        os.environ.pop("PYTHONASYNCIODEBUG", None)


def _checked(item: pytest.Item, phase: str) -> Generator[None, None, None]:
    """Run one phase of ``item`` watching the ``asyncio`` logger; fail it if it blocked."""
    reports = BlockingReports()
    logger = logging.getLogger("asyncio")
    logger.addHandler(reports)
    try:
        with _debug_env_for_sync_test(item):
            yield
    finally:
        logger.removeHandler(reports)
    if reports.reports and item.get_closest_marker("allow_blocking") is None:
        listed = "\n  ".join(reports.reports)
        pytest.fail(
            f"the event loop was blocked for {BLOCKING_THRESHOLD} s or more during {phase}:\n"
            f"  {listed}\n"
            "Move the blocking work off the loop (asyncio.to_thread) or, if blocking is "
            "the point of the test, mark it @pytest.mark.allow_blocking.",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a test whose fixtures block the loop while they are set up."""
    yield from _checked(item, "setup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a test whose code blocks the loop."""
    yield from _checked(item, "call")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a test whose fixtures block the loop while they are torn down."""
    yield from _checked(item, "teardown")
