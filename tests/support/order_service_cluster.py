"""Processes and plans for the order service's end-to-end test.

- :class:`Cluster`: starts the example's API (uvicorn) and workers as real OS processes on
  one fresh schema, kills or stops them, and makes sure none outlives the test;
- :func:`plan_orders`: the orders the test places (deterministic for a seed), with the ones
  the card limit declines, the ones that ask for scarce stock and the slow ones to cancel;
- :func:`check_outcome`: the invariants checked with SQL once every order is terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from examples.order_service.services import CARD_LIMIT

from lexigram.events.sagas import SagaRecord, SagaStatus

__all__ = ["Cluster", "PlannedOrder", "check_outcome", "free_port", "plan_orders"]

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the processes run there, so ``examples.order_service`` imports."""

_PLENTIFUL = [f"sku-{n:02d}" for n in range(1, 9)]
_SCARCE = ["sku-rare-1", "sku-rare-2"]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Cluster:
    """The API and worker processes of one test, sharing one database schema.

    Args:
        env: The environment of every process (``ORDER_SERVICE_*`` included).
        logs: Where each process's output goes (``<name>.log``).
    """

    env: dict[str, str]
    logs: Path
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)

    async def _spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        out = (self.logs / f"{name}.log").open("wb")
        self._files.append(out)
        self.processes[name] = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def start_api(self, port: int) -> None:
        """Start the API under uvicorn on ``127.0.0.1:port``."""
        await self._spawn(
            "api",
            "-m",
            "uvicorn",
            "examples.order_service.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        )

    async def start_worker(self, name: str) -> None:
        """Start a worker whose id in leases is ``name``."""
        await self._spawn(
            name, "-m", "examples.order_service.worker", env={"ORDER_SERVICE_WORKER_ID": name}
        )

    async def kill(self, name: str) -> None:
        """SIGKILL a process (no cleanup of any kind) and reap it."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()

    async def stop(self, name: str, *, timeout: float) -> int | None:
        """SIGTERM a process; return its exit status, or ``None`` if it outlived ``timeout``."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await process.wait()
        except TimeoutError:
            return None

    def alive(self, name: str) -> bool:
        """Whether the process is still running."""
        return self.processes[name].returncode is None

    def output(self, name: str, *, lines: int = 40) -> str:
        """The last ``lines`` lines a process wrote."""
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def outputs(self) -> str:
        """Every process's last lines, to show when a check fails."""
        return "\n".join(f"--- {name} ---\n{self.output(name)}" for name in self.processes)

    async def close(self) -> None:
        """Kill every process still running and close the log files."""
        for name, process in self.processes.items():
            if process.returncode is None:
                await self.kill(name)
        for out in self._files:
            out.close()


def child_env(**settings: str) -> dict[str, str]:
    """The environment of the service's processes: ours, without debug switches."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE") and not key.startswith("ORDER_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"ORDER_SERVICE_{key.upper()}": value for key, value in settings.items()})
    return env


# ---------------------------------------------------------------------- the orders


@dataclass(frozen=True)
class PlannedOrder:
    """One order the test places."""

    key: str
    """Its ``Idempotency-Key``, so its order id."""
    body: dict[str, Any]
    """The JSON body of ``POST /orders``."""

    @property
    def slow(self) -> bool:
        """Whether its shipping step takes a while (the test cancels it meanwhile)."""
        return bool(self.body.get("slow"))

    @property
    def over_limit(self) -> bool:
        """Whether the card limit declines it."""
        return int(self.body["amount"]) > CARD_LIMIT


def plan_orders(count: int, run: str, *, slow_every: int, seed: int = 7) -> list[PlannedOrder]:
    """``count`` orders, the same for one ``seed``.

    Mostly ordinary; some over the card limit, some wanting scarce stock; and every
    ``slow_every``-th slow (affordable and in stock, so that it reaches its shipping step).
    """
    rng = random.Random(seed)
    orders = []
    for number in range(count):
        slow = number % slow_every == slow_every // 2
        lines = []
        for _ in range(rng.randint(1, 3)):
            scarce = not slow and rng.random() < 0.12
            sku = rng.choice(_SCARCE if scarce else _PLENTIFUL)
            lines.append({"sku": sku, "qty": rng.randint(1, 3)})
        amount = rng.randint(10, 500) if slow else rng.randint(10, 1200)
        body: dict[str, Any] = {"customer": f"customer-{number % 37}", "items": lines}
        body["amount"] = amount
        if slow:
            body["slow"] = True
        orders.append(PlannedOrder(f"e2e-{run}-{number:04d}", body))
    return orders


# ---------------------------------------------------------------------- the checks


async def check_outcome(
    conn: Any,
    schema: str,
    records: Sequence[SagaRecord],
    catalogue: Mapping[str, int],
) -> list[str]:
    """Every broken invariant of a finished run, as readable lines (empty: all good).

    - stock is conserved: available + actively reserved = the initial stock, per SKU;
    - a completed order has an active reservation, an active charge and an active
      shipment, each applied exactly once, and nothing undone;
    - a compensated order has nothing active: what was applied was undone exactly once;
    - no effect was applied twice (per order and operation, and per idempotency key).
    """
    s = f'"{schema}"'
    problems: list[str] = []

    reserved = {
        row["sku"]: row["qty"]
        for row in await conn.fetch(
            f"SELECT l.sku, sum(l.qty)::int AS qty FROM {s}.inventory_reservation_lines l"
            f" JOIN {s}.inventory_reservations r USING (order_id)"
            " WHERE r.status = 'active' GROUP BY l.sku"
        )
    }
    available = {
        row["sku"]: row["available"]
        for row in await conn.fetch(f"SELECT sku, available FROM {s}.inventory_stock")
    }
    for sku, initial in catalogue.items():
        held = available.get(sku, 0) + reserved.get(sku, 0)
        if held != initial:
            problems.append(
                f"stock of {sku} not conserved: {available.get(sku)} available + "
                f"{reserved.get(sku, 0)} reserved != {initial}"
            )

    active: dict[str, set[str]] = {"reservation": set(), "charge": set(), "shipment": set()}
    for kind, sql in (
        ("reservation", f"SELECT order_id FROM {s}.inventory_reservations WHERE status = 'active'"),
        ("charge", f"SELECT order_id FROM {s}.payments WHERE status = 'charged'"),
        ("shipment", f"SELECT order_id FROM {s}.shipments WHERE status = 'created'"),
    ):
        active[kind] = {row["order_id"] for row in await conn.fetch(sql)}

    effects: dict[str, Counter[str]] = {}
    for row in await conn.fetch(f"SELECT order_id, operation FROM {s}.service_effects"):
        effects.setdefault(row["order_id"], Counter())[row["operation"]] += 1
    for row in await conn.fetch(
        f"SELECT idempotency_key, count(*) AS n FROM {s}.service_effects"
        " GROUP BY idempotency_key HAVING count(*) > 1"
    ):
        problems.append(f"idempotency key {row['idempotency_key']} applied {row['n']} times")

    undo = {"reserve": "release", "charge": "refund", "ship": "cancel_shipment"}
    for record in records:
        order = record.saga_id
        done = effects.get(order, Counter())
        twice = sorted(op for op, n in done.items() if n > 1)
        if twice:
            problems.append(f"{order}: applied more than once: {twice}")
        if record.status is SagaStatus.COMPLETED:
            missing = sorted(kind for kind, ids in active.items() if order not in ids)
            if missing:
                problems.append(f"{order} completed without an active {', '.join(missing)}")
            if done != Counter({"reserve": 1, "charge": 1, "ship": 1}):
                problems.append(f"{order} completed with effects {dict(done)}")
        elif record.status is SagaStatus.COMPENSATED:
            orphans = sorted(kind for kind, ids in active.items() if order in ids)
            if orphans:
                problems.append(f"{order} compensated but still has an active {orphans}")
            for applied, undone in undo.items():
                if done[applied] != done[undone]:
                    problems.append(f"{order} compensated with effects {dict(done)}")
                    break
        else:
            problems.append(f"{order} ended {record.status.value}: {record.error}")
    return problems
