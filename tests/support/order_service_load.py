"""The client side of the order service's end-to-end test: HTTP load, cancels, the kill.

- :func:`http_client`, :func:`wait_until_up`, :func:`post_order`, :func:`place_orders`:
  place orders over HTTP as a client would (retrying a ``503``, safe thanks to the
  ``Idempotency-Key``);
- :func:`cancel_while_shipping`: cancel an order through the API while its slow shipping
  step runs, and say what happened (:class:`CancelAttempt`);
- :func:`kill_when_busy`: SIGKILL a worker while it holds orders; :func:`wait_all_terminal`;
- :func:`print_summary`: what the run did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
from collections import Counter
from typing import Any

import pytest

from tests.support.order_service_cluster import Cluster, PlannedOrder

__all__ = [
    "LIVE_STATUSES",
    "TERMINAL",
    "CancelAttempt",
    "cancel_while_shipping",
    "http_client",
    "kill_when_busy",
    "place_orders",
    "post_order",
    "print_summary",
    "wait_all_terminal",
    "wait_until_up",
]

TERMINAL = frozenset({"completed", "compensated", "failed"})
LIVE_STATUSES = ("pending", "running", "compensating")


def key_header(order: PlannedOrder) -> dict[str, str]:
    """The ``Idempotency-Key`` header of an order."""
    return {"Idempotency-Key": order.key}


async def wait_until_up(http: Any, cluster: Cluster, give_up: float) -> None:
    """Wait until the API answers ``/health`` (it is connected to PostgreSQL)."""
    loop = asyncio.get_running_loop()
    while loop.time() < give_up:
        if not cluster.alive("api"):
            pytest.fail(f"the API exited\n{cluster.output('api')}")
        with contextlib.suppress(OSError, ConnectionError, TimeoutError, *http_errors()):
            if (await http.get("/health")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    pytest.fail(f"the API never came up\n{cluster.outputs()}")


def http_client(base_url: str, transport: Any = None) -> Any:
    """An httpx client for the API, with what its first request imports already imported.

    Call it in a thread: those imports (anyio's asyncio backend among them) would hold the
    event loop long enough to fail the blocking check.
    """
    import httpx

    importlib.import_module("anyio._backends._asyncio")
    return httpx.AsyncClient(base_url=base_url, timeout=15, transport=transport)


def http_errors() -> tuple[type[Exception], ...]:
    """The transport errors of httpx (imported late: httpx is optional)."""
    import httpx

    return (httpx.TransportError,)


async def post_order(http: Any, order: PlannedOrder) -> str:
    """POST one order and return its id; retry a 503 (the Idempotency-Key makes it safe)."""
    for _ in range(20):
        reply = await http.post("/orders", json=order.body, headers=key_header(order))
        if reply.status_code != 503:
            break
        await asyncio.sleep(0.5)
    assert reply.status_code == 202, reply.text
    order_id: str = reply.json()["order_id"]
    return order_id


async def place_orders(
    http: Any, orders: list[PlannedOrder], posted: dict[str, str], *, concurrency: int
) -> None:
    """POST every order, ``concurrency`` at a time; record key -> order id."""
    queue: asyncio.Queue[PlannedOrder] = asyncio.Queue()
    for order in orders:
        queue.put_nowait(order)

    async def poster() -> None:
        while not queue.empty():
            order = queue.get_nowait()
            posted[order.key] = await post_order(http, order)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(poster())


@dataclasses.dataclass
class CancelAttempt:
    """What :func:`cancel_while_shipping` did for one order."""

    order_id: str
    outcome: str = "never shipping"
    """``"cancelled"`` (202: the request is stored), ``"finished first"`` (the order ended
    before its shipping step was seen running, or 409), or ``"never shipping"``."""
    polls: int = 0
    seen: list[str] = dataclasses.field(default_factory=list)
    """The distinct (status, current step) the polls saw, in order, with when (seconds)."""


async def cancel_while_shipping(http: Any, order_id: str, give_up: float) -> CancelAttempt:
    """Cancel the order through the API once its shipping step runs; say what happened."""
    loop = asyncio.get_running_loop()
    attempt = CancelAttempt(order_id)
    began = loop.time()
    while loop.time() < give_up:
        reply = await http.get(f"/orders/{order_id}")
        attempt.polls += 1
        state = f"{reply.status_code}"
        if reply.status_code == 200:  # 404 until it is placed; 503 if the store is busy
            order = reply.json()
            state = f"{order['status']}/{order['current_step']}"
        if not attempt.seen or not attempt.seen[-1].startswith(state + "@"):
            attempt.seen.append(f"{state}@{loop.time() - began:.1f}")
        if reply.status_code == 200:
            if order["status"] in TERMINAL:
                attempt.outcome = "finished first"
                return attempt
            # A step is written when it ends: a running one shows as the current step.
            if order["current_step"] == "create_shipment":
                body = {"reason": "the customer changed their mind"}
                cancel = await http.post(f"/orders/{order_id}/cancel", json=body)
                assert cancel.status_code in (202, 409, 503), cancel.text
                if cancel.status_code == 202:
                    assert cancel.json()["cancel_requested_at"] is not None
                    attempt.outcome = "cancelled"
                    return attempt
                if cancel.status_code == 409:
                    attempt.outcome = "finished first"
                    return attempt
        await asyncio.sleep(0.3)
    return attempt


async def kill_when_busy(
    pool: Any,
    cluster: Cluster,
    victim: str,
    saga_table: str,
    posted: dict[str, str],
    give_up: float,
    *,
    min_placed: int,
    min_held: int = 5,
) -> list[str]:
    """SIGKILL ``victim`` once ``min_placed`` orders are placed and it holds ``min_held``.

    Returns the orders it held when it died: its lease on them must expire, and another
    worker must take them over.
    """
    held_by = (
        f"SELECT saga_id FROM {saga_table} WHERE lease_owner = $1 AND status = ANY($2::text[])"
    )
    loop = asyncio.get_running_loop()
    while loop.time() < give_up:
        if not cluster.alive(victim):
            pytest.fail(f"{victim} exited by itself\n{cluster.output(victim)}")
        if len(posted) >= min_placed:
            held = await pool.fetch(held_by, victim, list(LIVE_STATUSES))
            if len(held) >= min_held:
                break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"{victim} never held {min_held} orders at once\n{cluster.outputs()}")
    await cluster.kill(victim)
    return [row["saga_id"] for row in await pool.fetch(held_by, victim, list(LIVE_STATUSES))]


async def wait_all_terminal(
    pool: Any, saga_table: str, expected: int, cluster: Cluster, give_up: float
) -> dict[str, int]:
    """Wait until ``expected`` orders exist and all are terminal; return counts by status."""
    loop = asyncio.get_running_loop()
    counts: dict[str, int] = {}
    while loop.time() < give_up:
        rows = await pool.fetch(f"SELECT status, count(*)::int AS n FROM {saga_table} GROUP BY 1")
        counts = {row["status"]: row["n"] for row in rows}
        if sum(counts.values()) == expected and set(counts) <= TERMINAL:
            return counts
        await asyncio.sleep(0.5)
    pytest.fail(f"orders not all terminal in time: {counts}\n{cluster.outputs()}")


def print_summary(
    records: list[Any],
    *,
    counts: dict[str, int],
    orphans: int,
    cancels: dict[str, CancelAttempt],
    times: dict[str, float],
) -> None:
    """Print what the run did (shown with ``pytest -s``)."""
    failures = Counter(
        f"{record.failure.kind}@{record.failure.step}" for record in records if record.failure
    )
    faults = sum(len(step.attempt_errors) for record in records for step in record.steps.values())
    moved = sum(1 for record in records if record.previous_owner is not None)
    lines = [
        f"order service e2e: {len(records)} orders, by status {dict(sorted(counts.items()))}",
        f"  failures: {dict(sorted(failures.items()))}",
        f"  transient faults retried: {faults}; held by the killed worker: {orphans};"
        f" taken over from another worker: {moved};"
        f" cancels: {dict(Counter(attempt.outcome for attempt in cancels.values()))}",
        "  seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in times.items()),
    ]
    by_id = {record.saga_id: record for record in records}
    for key, attempt in sorted(cancels.items()):
        if attempt.outcome != "cancelled":
            record = by_id[key]
            lines.append(
                f"  not cancelled: {key} ended {record.status.value} ({record.failure});"
                f" {attempt.polls} polls, seen: {attempt.seen}"
            )
    print("\n".join(lines))
