"""One timer for the deadlines of every saga a worker runs.

A timer per saga (``loop.call_later``) costs several microseconds and leaves a cancelled
handle in the loop's heap for the whole deadline (five minutes by default). Instead, the
engine keeps its own heap of ``(when, run)`` and one loop timer for the earliest entry.
Finished runs are dropped lazily, and the heap is compacted once most entries are dead.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from lexigram.events.sagas._engine.run import StopReason

__all__ = ["DeadlineTimer"]


class _Stoppable(Protocol):
    finished: bool

    def stop(self, reason: StopReason, message: str = "") -> None: ...


class DeadlineTimer:
    """Calls ``run.stop(reason)`` for each registered run whose deadline passes."""

    def __init__(self, reason: StopReason, message: str) -> None:
        self._reason = reason
        self._message = message
        self._heap: list[tuple[float, int, _Stoppable]] = []
        self._order = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = 0.0
        self._dead = 0

    def add(self, loop: asyncio.AbstractEventLoop, delay: float, run: _Stoppable) -> None:
        """Stop ``run`` ``delay`` seconds from now unless it finished by then."""
        if delay <= 0:  # already past (a saga resumed after its deadline): stop at once
            run.stop(self._reason, self._message)
            return
        when = loop.time() + delay
        heapq.heappush(self._heap, (when, next(self._order), run))
        if self._handle is None or when < self._handle_when:
            self._schedule(loop, when)

    def finished(self) -> None:
        """Note that a registered run finished (its entry is dropped lazily)."""
        self._dead += 1
        heap = self._heap
        if self._dead > 64 and self._dead * 2 > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].finished]
            heapq.heapify(heap)
            self._dead = 0

    def close(self) -> None:
        """Cancel the loop timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_when = when
        self._handle = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        heap = self._heap
        now = loop.time()
        due: list[Callable[[StopReason, str], None]] = []
        while heap and (heap[0][0] <= now or heap[0][2].finished):
            _, _, run = heapq.heappop(heap)
            if run.finished:
                self._dead = max(self._dead - 1, 0)
            else:
                due.append(run.stop)
        if heap:
            self._schedule(loop, heap[0][0])
        for stop in due:
            stop(self._reason, self._message)
