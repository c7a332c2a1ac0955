"""The order service's worker: runs the order sagas the API enqueued.

Run one or more, on one machine or many (see ``settings.py`` for the variables)::

    export ORDER_SERVICE_DSN=postgresql://postgres@127.0.0.1:5432/postgres
    python -m examples.order_service.worker

A worker creates the services' tables if needed, then serves: it claims enqueued orders,
orders whose worker died (once that worker's lease expired) and orders someone asked to
cancel. SIGTERM or SIGINT stops it gracefully: it claims nothing more, lets the running
steps finish (up to ``shutdown_timeout``) and releases the rest to the other workers.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from lexigram.events.sagas import SagaConfig, SagaManager
from lexigram.events.sagas.postgres import PostgresSagaStore

from .saga import ORDER_SAGA_CONFIG, OrderSaga
from .services import OrderServices, install
from .settings import Settings

__all__ = ["main", "run_worker"]

logger = logging.getLogger("order_service.worker")


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Serve order sagas until ``stop`` is set, then shut down gracefully."""
    pool = await asyncpg.create_pool(settings.dsn, min_size=1, max_size=settings.pool_size)
    try:
        await install(pool, settings.schema)
        services = OrderServices.connect(pool, settings.schema, fault_rate=settings.fault_rate)
        store = PostgresSagaStore(
            settings.dsn,
            schema=settings.schema,
            table=settings.table,
            max_size=settings.pool_size,
        )
        # Leases and shutdown are worker-wide settings; retries and the deadline are the
        # order saga's own (ORDER_SAGA_CONFIG).
        config = SagaConfig(lease_seconds=settings.lease_seconds, shutdown_timeout=10.0)
        async with (
            store,
            SagaManager(store, config=config, worker_id=settings.worker_id) as manager,
        ):
            manager.register(
                OrderSaga,
                factory=lambda: OrderSaga(services, slow_seconds=settings.slow_seconds),
                config=ORDER_SAGA_CONFIG,
            )
            logger.info(
                "worker %s serving %s.%s (concurrency %d, lease %gs)",
                manager.worker_id,
                settings.schema,
                settings.table,
                settings.concurrency,
                settings.lease_seconds,
            )
            await manager.serve(concurrency=settings.concurrency, stop=stop)
            logger.info("worker %s stopped", manager.worker_id)
    finally:
        await pool.close()


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_worker(settings, stop)


def main() -> None:
    """The command-line entry point: read the settings from the environment and serve."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
