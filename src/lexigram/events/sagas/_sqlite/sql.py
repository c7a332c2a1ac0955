"""The SQL of ``SQLiteSagaStore``: the table, its indexes, its migration, every statement.

Row layout: the JSON document written by ``codec.encode_record`` holds the whole record;
a few fields are copied into columns, for indexes and for the lease operations:

- ``saga_name``, ``created_at_us``: fixed at insert (list and claim order, list by name);
- ``status``, ``completed_at_us``, ``not_before_us``: rewritten by every ``save``;
- ``version``, ``updated_at_us``, ``lease_owner``, ``lease_id``, ``lease_expires_at_us``,
  ``previous_owner``, ``recovery_attempts``: rewritten by ``save`` **and** by ``claim``,
  ``renew`` and ``release``, which change only these columns (not the document);
- ``cancel_requested_at_us``, ``cancel_reason``: written by the insert and by
  ``request_cancel`` only; a ``save`` of an existing row never names them.

For the last nine fields **the columns are the truth**: loading a row decodes the document
and overlays them. This keeps a heartbeat renewal one small ``UPDATE`` of one column, a
claim free of re-encoding documents, and a cancel request safe from the holder's saves.
Times in columns are integer microseconds since the Unix epoch (UTC): exact, and ordered
like the times themselves.

Claims read four small partial indexes, never one that holds finished sagas or sagas held
under a live lease: ``_queued`` and ``_scheduled`` (sagas nobody holds, by the time they
are due), ``_expiry`` (held sagas by lease expiry: only the expired end is read) and
``_holder`` (held sagas by owner: only an earlier incarnation's are read). ``_cancels``
holds only the live sagas asked to cancel, so a heartbeat's ``cancel_requests`` is free
when there is none.
"""

from __future__ import annotations

from typing import Final

from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["LIVE", "READ", "SCHEMA_VERSION", "TERMINAL", "Statements"]

SCHEMA_VERSION: Final = 2
"""Version of the table layout below; stored in the ``<table>_meta`` table.

1: the first layout. 2: adds ``not_before_us``, ``cancel_requested_at_us``,
``cancel_reason``, the claim and cancel indexes, and replaces the ``_active`` index by
``_live`` (see :meth:`Statements.migrate_v1`).
"""


def _status_list(statuses: list[SagaStatus]) -> str:
    return "status IN (" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


# LIVE is written out identically in the partial indexes and in the queries meant to use
# them: SQLite uses a partial index only when the query's WHERE clause contains each term
# of its condition. It excludes the terminal statuses (a live status added later needs no
# new index) as `<>` terms, not as `status IN (...)`: SQLite evaluates an IN list of three
# or more by building a temporary table, for every statement that writes a row of such a
# partial index. Schema 1's `_active` index did that: replacing it by `_live` took 254,000
# of 2,018,000 instructions off each 3-step saga (insert + 3 saves, callgrind).
_TERMINAL_STATUSES: Final = [s for s in SagaStatus if s in TERMINAL_SAGA_STATUSES]
TERMINAL: Final = _status_list(_TERMINAL_STATUSES)
LIVE: Final = " AND ".join(f"status <> '{status.value}'" for status in _TERMINAL_STATUSES)

# The lease term first: a held saga (every save of start()'s hot path) is out of the
# indexes of free sagas after one test.
_FREE: Final = f"lease_owner IS NULL AND {LIVE}"
_HELD: Final = f"lease_owner IS NOT NULL AND {LIVE}"

_COLUMNS: Final = (
    "saga_id",
    "saga_name",
    "status",
    "doc",
    "version",
    "updated_at_us",
    "lease_owner",
    "lease_id",
    "lease_expires_at_us",
    "previous_owner",
    "recovery_attempts",
    "cancel_requested_at_us",
    "cancel_reason",
)
READ: Final = ", ".join(_COLUMNS)
"""The columns every read selects, in the order ``ops.to_record`` unpacks them."""
_READ_T: Final = ", ".join(f"t.{column}" for column in _COLUMNS)

_ADDED_IN_V2: Final = (
    ("not_before_us", "INTEGER"),
    ("cancel_requested_at_us", "INTEGER"),
    ("cancel_reason", "TEXT"),
)


def _table(table: str) -> str:
    added = "".join(f",\n            {name} {kind}" for name, kind in _ADDED_IN_V2)
    return f"""CREATE TABLE IF NOT EXISTS "{table}" (
            saga_id TEXT PRIMARY KEY NOT NULL,
            saga_name TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at_us INTEGER,
            updated_at_us INTEGER,
            completed_at_us INTEGER,
            lease_owner TEXT,
            lease_id TEXT,
            lease_expires_at_us INTEGER,
            previous_owner TEXT,
            recovery_attempts INTEGER NOT NULL DEFAULT 0,
            doc TEXT NOT NULL{added}
        )"""


def _v1_indexes(table: str) -> tuple[str, ...]:
    """Schema 1's indexes that schema 2 keeps (it replaces ``_active`` by ``_live``)."""
    t = f'"{table}"'
    return (
        f'CREATE INDEX IF NOT EXISTS "{table}_created" ON {t} (created_at_us, saga_id)',
        f'CREATE INDEX IF NOT EXISTS "{table}_name" ON {t} (saga_name, created_at_us, saga_id)',
        f'CREATE INDEX IF NOT EXISTS "{table}_completed" ON {t} (completed_at_us) '
        "WHERE completed_at_us IS NOT NULL",
    )


def _v2_indexes(table: str) -> tuple[str, ...]:
    t = f'"{table}"'
    return (
        # The sagas that are not terminal, oldest first (listing by a live status).
        f'CREATE INDEX IF NOT EXISTS "{table}_live" ON {t} (created_at_us, saga_id) WHERE {LIVE}',
        # Free sagas, by the time they are due: created_at when not_before is unset...
        f'CREATE INDEX IF NOT EXISTS "{table}_queued" ON {t} (saga_name, created_at_us, '
        f"saga_id) WHERE {_FREE} AND not_before_us IS NULL",
        # ... else not_before (a claim reads only the part that is due).
        f'CREATE INDEX IF NOT EXISTS "{table}_scheduled" ON {t} (saga_name, not_before_us, '
        f"saga_id) WHERE {_FREE} AND not_before_us IS NOT NULL",
        # Held sagas: by lease expiry (claims read the expired end)...
        f'CREATE INDEX IF NOT EXISTS "{table}_expiry" ON {t} (lease_expires_at_us) WHERE {_HELD}',
        # ... and by holder (a restarted worker's earlier incarnation).
        f'CREATE INDEX IF NOT EXISTS "{table}_holder" ON {t} (lease_owner, lease_id) WHERE {_HELD}',
        # Cancel requests of live sagas: empty, and free to read, when there are none.
        f'CREATE INDEX IF NOT EXISTS "{table}_cancels" ON {t} (lease_owner, lease_id) '
        f"WHERE cancel_requested_at_us IS NOT NULL AND {LIVE}",
    )


class Statements:
    """Every SQL statement of one table, built once (the table name is validated first)."""

    def __init__(self, table: str) -> None:
        t = f'"{table}"'
        self.table = table
        self.meta = f'"{table}_meta"'
        self.schema = (_table(table), *_v1_indexes(table), *_v2_indexes(table))
        self.migrate_v1 = (
            *(f"ALTER TABLE {t} ADD COLUMN {name} {kind}" for name, kind in _ADDED_IN_V2),
            f'DROP INDEX IF EXISTS "{table}_active"',
            *_v2_indexes(table),
        )
        """Schema 1 to 2: the new columns (``NULL`` in old rows: no delay, no request).

        A process still running schema 1's code when the table is migrated goes on
        saving, but its claims fail loudly (``no such index``) until it is upgraded (it
        would not honour ``not_before`` nor cancel requests anyway).
        """
        self.insert = (
            f"INSERT INTO {t} (saga_id, saga_name, status, version, created_at_us, "
            "not_before_us, cancel_requested_at_us, cancel_reason, updated_at_us, "
            "completed_at_us, lease_owner, lease_id, lease_expires_at_us, previous_owner, "
            "recovery_attempts, doc) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (saga_id) DO NOTHING"
        )
        # saga_name and created_at_us are left out on purpose: an UPDATE that does not
        # name an index's columns does not touch that index. The cancel columns are left
        # out because they are the store's (see request_cancel).
        self.update = (
            f"UPDATE {t} SET status = ?, version = ?, not_before_us = ?, updated_at_us = ?, "
            "completed_at_us = ?, lease_owner = ?, lease_id = ?, lease_expires_at_us = ?, "
            "previous_owner = ?, recovery_attempts = ?, doc = ? WHERE saga_id = ? AND version = ?"
        )
        self.version_of = f"SELECT version FROM {t} WHERE saga_id = ?"
        self.load = f"SELECT {READ} FROM {t} WHERE saga_id = ?"
        self.delete = f"DELETE FROM {t} WHERE saga_id = ?"
        self.delete_terminal = (
            f"DELETE FROM {t} WHERE saga_id IN (SELECT saga_id FROM {t} "
            f"WHERE completed_at_us < ? AND {TERMINAL} ORDER BY completed_at_us LIMIT ?)"
        )
        self.take_lease = (
            f"UPDATE {t} SET lease_owner = ?, lease_id = ?, lease_expires_at_us = ?, "
            "previous_owner = ?, recovery_attempts = ?, updated_at_us = ?, version = ? "
            "WHERE saga_id = ? AND version = ?"
        )
        self.renew = (
            f"UPDATE {t} SET lease_expires_at_us = ? "
            f"WHERE saga_id = ? AND lease_owner = ? AND lease_id = ? AND {LIVE}"
        )
        self.release = (
            f"UPDATE {t} SET lease_owner = NULL, lease_id = NULL, lease_expires_at_us = NULL, "
            "version = version + 1 WHERE saga_id = ? AND lease_owner = ? AND lease_id = ?"
        )
        self.request_cancel = (
            f"UPDATE {t} SET cancel_requested_at_us = ?, cancel_reason = ? "
            f"WHERE saga_id = ? AND cancel_requested_at_us IS NULL AND {LIVE}"
        )
        self.cancel_requests = (
            f'SELECT saga_id, cancel_reason FROM {t} INDEXED BY "{table}_cancels" '
            f"WHERE cancel_requested_at_us IS NOT NULL AND {LIVE} "
            "AND lease_owner = ? AND lease_id = ?"
        )
        self._lists: dict[tuple[bool, bool, bool, bool], str] = {}
        self._claims: dict[tuple[int, bool], str] = {}

    def select_list(self, *, by_name: bool, status: SagaStatus | None, limited: bool) -> str:
        """The listing query for this combination of filters (newest first)."""
        active = status is not None and status not in TERMINAL_SAGA_STATUSES
        key = (by_name, status is not None, active, limited)
        sql = self._lists.get(key)
        if sql is None:
            where = [
                term for term, on in (("saga_name = ?", by_name), ("status = ?", status)) if on
            ]
            if active:
                where.append(LIVE)  # lets SQLite use the small index of live sagas
            sql = f'SELECT {READ} FROM "{self.table}"'
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at_us DESC, saga_id DESC"
            if limited:
                sql += " LIMIT ?"
            self._lists[key] = sql
        return sql

    def select_claimable(self, names: int, *, one: bool) -> str:
        """The claim candidates query for ``names`` saga names (one saga, or oldest first).

        Named parameters: ``:n0`` ... (the names), ``:now``, ``:owner``, ``:lease_id``,
        ``:excluded`` (a JSON array of ids passed over) and ``:want`` (how many rows);
        ``:saga_id`` too when ``one``. Rows come oldest first: by ``not_before`` when set,
        else ``created_at``, then ``saga_id``.
        """
        key = (names, one)
        sql = self._claims.get(key)
        if sql is None:
            sql = _select_one(self.table, names) if one else _select_oldest(self.table, names)
            self._claims[key] = sql
        return sql


_EXCLUDED: Final = "saga_id NOT IN (SELECT value FROM json_each(:excluded))"
_PER_NAME: Final = 64
"""Up to this many saga names, a claim reads the free sagas of each name apart."""
_READY: Final = "coalesce(not_before_us, created_at_us)"


def _names_in(names: int) -> str:
    return "saga_name IN (" + ", ".join(f":n{index}" for index in range(names)) + ")"


def _select_one(table: str, names: int) -> str:
    """One saga by its primary key, if claimable (mirrors ``_leases.is_claimable``)."""
    return (
        f'SELECT {READ} FROM "{table}" WHERE saga_id = :saga_id AND {LIVE} '
        f"AND {_names_in(names)} AND lease_id IS NOT :lease_id AND {_EXCLUDED} AND ("
        "(lease_owner IS NULL AND (not_before_us IS NULL OR not_before_us <= :now "
        "OR cancel_requested_at_us IS NOT NULL)) "
        "OR (lease_owner IS NOT NULL AND (lease_expires_at_us IS NULL "
        "OR lease_expires_at_us <= :now OR lease_owner = :owner))) LIMIT :want"
    )


def _select_oldest(table: str, names: int) -> str:
    """The oldest claimable sagas: each kind read from its own index, then merged.

    Every arm reads one partial index from its useful end and stops after ``:want`` rows
    (``INDEXED BY``: without statistics, SQLite would rather walk the index of all the
    sagas of a name). The arms are disjoint, so no saga comes twice.
    """
    t = f'"{table}"'
    arms: list[str] = []
    # One pair of arms per name (SQLite allows 500 terms in a compound SELECT); past
    # _PER_NAME names, one pair for all, which reads every free saga of those names.
    groups = [f"= :n{position}" for position in range(names)]
    if names > _PER_NAME:
        groups = [_names_in(names).removeprefix("saga_name ")]
    for group in groups:
        arms.append(  # free, no delay: oldest created first
            f'SELECT saga_id, created_at_us AS ready FROM {t} INDEXED BY "{table}_queued" '
            f"WHERE {_FREE} AND not_before_us IS NULL AND saga_name {group} "
            f"AND lease_id IS NOT :lease_id AND {_EXCLUDED} "
            "ORDER BY created_at_us, saga_id LIMIT :want"
        )
        arms.append(  # free, delayed until a time that has come
            f'SELECT saga_id, not_before_us AS ready FROM {t} INDEXED BY "{table}_scheduled" '
            f"WHERE {_FREE} AND not_before_us IS NOT NULL AND saga_name {group} "
            f"AND not_before_us <= :now AND lease_id IS NOT :lease_id AND {_EXCLUDED} "
            "ORDER BY not_before_us, saga_id LIMIT :want"
        )
    arms.append(  # free, delayed, but asked to cancel: it must not wait for its time
        f'SELECT saga_id, not_before_us AS ready FROM {t} INDEXED BY "{table}_cancels" '
        f"WHERE cancel_requested_at_us IS NOT NULL AND {_FREE} AND not_before_us > :now "
        f"AND {_names_in(names)} AND lease_id IS NOT :lease_id AND {_EXCLUDED} "
        "ORDER BY ready, saga_id LIMIT :want"
    )
    for index, condition in (
        ("expiry", "lease_expires_at_us <= :now AND lease_id IS NOT :lease_id"),
        ("expiry", "lease_expires_at_us IS NULL AND lease_id IS NOT :lease_id"),
        # An earlier incarnation of this worker: its name, another lease_id, a live lease
        # (an expired one is the arms above'). Two ranges skip this incarnation's own.
        ("holder", "lease_owner = :owner AND lease_id < :lease_id"),
        ("holder", "lease_owner = :owner AND lease_id > :lease_id"),
        ("holder", "lease_owner = :owner AND lease_id IS NULL"),
    ):
        live = "" if index == "expiry" else " AND lease_expires_at_us > :now"
        arms.append(
            f'SELECT saga_id, {_READY} AS ready FROM {t} INDEXED BY "{table}_{index}" '
            f"WHERE {_HELD} AND {condition}{live} AND {_names_in(names)} AND {_EXCLUDED} "
            "ORDER BY ready, saga_id LIMIT :want"
        )
    merged = " UNION ALL ".join(f"SELECT saga_id, ready FROM ({arm})" for arm in arms)
    return (
        f"SELECT {_READ_T} FROM ({merged} ORDER BY ready, saga_id LIMIT :want) AS c "
        f"CROSS JOIN {t} AS t ON t.saga_id = c.saga_id ORDER BY c.ready, c.saga_id"
    )
