"""A worker process for the multi-process service tests: ``serve()`` one saga type.

Run as ``python -m tests.support.service_worker --store KIND --target WHERE --table T
--log FILE [--worker-id W] [--lease SECONDS]``. The saga ``svc`` has three steps; step
``b`` sleeps ``data["hold"]`` seconds (default 0). Every action and compensation appends a
JSON line ``{"worker", "saga", "event"}`` to the log, flushed at once, so the test sees
them even after a SIGKILL. The process serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

from lexigram.events.sagas import SagaBase, SagaConfig, SagaContext, SagaManager, saga_step
from tests.support.crash_worker import open_store


class ServiceSaga(SagaBase):
    """Three steps; ``b`` can be held long enough to be cancelled or killed in."""

    name = "svc"

    def __init__(self, log: Path, worker: str) -> None:
        self.log = log
        self.worker = worker

    def note(self, ctx: SagaContext, event: str) -> None:
        line = json.dumps({"worker": self.worker, "saga": ctx.saga_id, "event": event})
        with self.log.open("a") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    @saga_step("a")
    async def a(self, ctx: SagaContext) -> None:
        self.note(ctx, "a")

    @saga_step("a", compensation=True)
    async def undo_a(self, ctx: SagaContext) -> None:
        self.note(ctx, "undo a")

    @saga_step("b", max_retries=0)
    async def b(self, ctx: SagaContext) -> None:
        self.note(ctx, "b entered")
        await asyncio.sleep(float(ctx.get("hold", 0)))
        self.note(ctx, "b done")

    @saga_step("b", compensation=True)
    async def undo_b(self, ctx: SagaContext) -> None:
        self.note(ctx, "undo b")

    @saga_step("c")
    async def c(self, ctx: SagaContext) -> None:
        self.note(ctx, "c")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--table", default="lexigram_sagas")
    parser.add_argument("--log", required=True)
    parser.add_argument("--worker-id", default=f"svc-{os.getpid()}")
    parser.add_argument("--lease", type=float, default=3.0)
    args = parser.parse_args()
    store = open_store(args.store, args.target, args.table)
    config = SagaConfig(lease_seconds=args.lease, retry_delay_seconds=0, shutdown_timeout=1)
    worker = SagaManager(store=store, config=config, worker_id=args.worker_id)
    log = Path(args.log)
    worker.register(ServiceSaga, factory=lambda: ServiceSaga(log, args.worker_id))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await worker.serve(concurrency=20, stop=stop, poll_interval=0.2)
    await worker.close()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
