"""``PostgresSagaStore``: saga state in PostgreSQL, for many workers on many machines.

Needs the ``postgres`` extra (asyncpg)::

    pip install 'lexigram-events[postgres]'

    store = PostgresSagaStore("postgresql://app@db/app")
    manager = SagaManager(store)

Workers wake at once on new work from any process (``LISTEN``/``NOTIFY``, over one
connection per waiting store, opened by its first ``wait_for_work``). A saga can be
enqueued inside the caller's own transaction, so it exists if and only if that commits::

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO orders ...")
        await manager.enqueue("checkout", {"order_id": order_id}, connection=conn)

Signals to waiting sagas (``manager.signal``) are kept in ``<table>_signals``, next to the
saga table, and deleted with their saga.

How it keeps the store contract is described in ``lexigram.events.sagas._postgres.store``.
"""

from __future__ import annotations

try:
    import asyncpg  # noqa: F401 - only checked here, to name the extra when missing
except ImportError as exc:
    raise ImportError(
        "PostgresSagaStore needs asyncpg: pip install 'lexigram-events[postgres]'"
    ) from exc

from lexigram.events.sagas._postgres.store import PostgresSagaStore

__all__ = ["PostgresSagaStore"]
