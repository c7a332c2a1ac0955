"""A worker process for the multi-process wait tests: ``serve()`` one saga that waits.

Run as ``python -m tests.support.wait_worker --store KIND --target WHERE --table T
--log FILE [--worker-id W] [--lease SECONDS] [--hold SECONDS] [--poll SECONDS]
[--concurrency N]``.

The saga ``waiter`` has three steps: ``prepare``, then ``approve``, which waits for the
signal ``approval`` (``wait_timeout`` of an hour), then ``finish``. In this process,
``approve`` sleeps ``--hold`` seconds after it logged its entry (0 by default), long enough
for a test to kill the process inside it. Every action and compensation appends a JSON
line ``{"worker", "saga", "event", "signal"}`` to the log (``signal`` is ``ctx.signal``),
fsynced at once so that the test sees it even after a SIGKILL. The process prints
``ready`` once it serves, and serves until SIGTERM.
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

__all__ = ["SAGA_NAME", "SIGNAL", "WAIT_TIMEOUT", "WaitSaga"]

SAGA_NAME = "waiter"
SIGNAL = "approval"
WAIT_TIMEOUT = 3600.0
"""Long enough never to pass during a test: only a signal ends the wait."""


class WaitSaga(SagaBase):
    """``prepare`` -> ``approve`` (waits for ``approval``) -> ``finish``."""

    name = SAGA_NAME

    def __init__(self, log: Path, worker: str, hold: float = 0.0) -> None:
        self.log = log
        self.worker = worker
        self.hold = hold

    def note(self, ctx: SagaContext, event: str) -> None:
        """Append one line to the shared log and make it durable before going on."""
        line = json.dumps(
            {"worker": self.worker, "saga": ctx.saga_id, "event": event, "signal": ctx.signal}
        )
        with self.log.open("a") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    @saga_step("prepare")
    async def prepare(self, ctx: SagaContext) -> None:
        self.note(ctx, "prepare")

    @saga_step("prepare", compensation=True)
    async def undo_prepare(self, ctx: SagaContext) -> None:
        self.note(ctx, "undo prepare")

    @saga_step("approve", wait_for=SIGNAL, wait_timeout=WAIT_TIMEOUT, max_retries=0)
    async def approve(self, ctx: SagaContext) -> dict[str, object]:
        self.note(ctx, "approve entered")
        if self.hold:
            await asyncio.sleep(self.hold)
        self.note(ctx, "approve done")
        assert ctx.signal is not None
        return {"approved": ctx.signal.get("n")}

    @saga_step("finish")
    async def finish(self, ctx: SagaContext) -> None:
        self.note(ctx, "finish")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--table", default="lexigram_sagas")
    parser.add_argument("--log", required=True)
    parser.add_argument("--worker-id", default=f"wait-{os.getpid()}")
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    store = open_store(args.store, args.target, args.table)
    config = SagaConfig(
        lease_seconds=args.lease,
        retry_delay_seconds=0,
        shutdown_timeout=1,
        default_timeout_seconds=86400,
    )
    worker = SagaManager(store=store, config=config, worker_id=args.worker_id)
    log = Path(args.log)
    worker.register(WaitSaga, factory=lambda: WaitSaga(log, args.worker_id, args.hold))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await worker.serve(concurrency=args.concurrency, stop=stop, poll_interval=args.poll)
    await worker.close()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
