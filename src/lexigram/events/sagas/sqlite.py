"""``SQLiteSagaStore``: the embedded durable store, one file shared by one or more processes.

Example::

    from lexigram.events.sagas import SagaManager
    from lexigram.events.sagas.sqlite import SQLiteSagaStore

    store = SQLiteSagaStore("sagas.db")
    async with SagaManager(store) as manager:
        manager.register(OrderFulfillmentSaga)
        await manager.recover()  # resume what a crashed run left behind
        record = await manager.execute("order_fulfillment", {"order_id": "ord-1"})
    await store.close()

The store runs on the standard library's ``sqlite3`` module: the
``lexigram-events[sqlite]`` extra installs nothing more, and is only needed on a Python
built without SQLite. Its internals live in ``lexigram.events.sagas._sqlite``.
"""

from __future__ import annotations

try:
    import sqlite3  # noqa: F401 - only checked here, to name the extra when missing
except ImportError as exc:  # a Python built without SQLite
    raise ImportError(
        "SQLiteSagaStore needs the standard library's sqlite3 module, which this Python "
        "lacks; install a Python built with SQLite, then pip install "
        "'lexigram-events[sqlite]'"
    ) from exc

from lexigram.events.sagas._sqlite.store import SQLiteSagaStore
from lexigram.events.sagas.errors import SchemaVersionError

__all__ = ["SQLiteSagaStore", "SchemaVersionError"]
